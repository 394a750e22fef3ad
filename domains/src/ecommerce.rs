//! The e-commerce domain: customers, products, orders, order items and payments.
//!
//! Every table carries audit columns (`created_by`, `created_at`,
//! `updated_by`, `updated_at`) kept by triggers, and every change is also
//! written to `audit_history` by an AFTER trigger, as a domain service
//! with an audit obligation would do.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

use crate::Result;

/// The publication the demo ingests (all e-commerce tables plus the audit history).
pub const PUBLICATION: &str = "ecommerce";

/// The tables of the domain, in dependency order.
pub const TABLES: &[&str] = &[
    "customers",
    "products",
    "orders",
    "order_items",
    "payments",
    "audit_history",
];

/// DDL of the domain: types, tables, audit triggers and the publication.
pub const SCHEMA: &str = r#"
CREATE TYPE order_status AS ENUM ('pending', 'paid', 'shipped', 'delivered', 'cancelled');

CREATE TABLE customers (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    tier        varchar(16) NOT NULL DEFAULT 'standard',
    tags        text[],
    birth_date  date,
    created_by  text NOT NULL DEFAULT current_user,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text,
    updated_at  timestamptz
);

CREATE TABLE products (
    id          bigserial PRIMARY KEY,
    sku         varchar(32) NOT NULL UNIQUE,
    name        text NOT NULL,
    description text,
    price       numeric(12, 2) NOT NULL,
    stock       integer NOT NULL,
    weight_kg   real,
    active      boolean NOT NULL DEFAULT true,
    attributes  jsonb,
    created_by  text NOT NULL DEFAULT current_user,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text,
    updated_at  timestamptz
);

CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id),
    status      order_status NOT NULL DEFAULT 'pending',
    total       numeric(14, 2) NOT NULL DEFAULT 0,
    placed_on   date NOT NULL DEFAULT current_date,
    created_by  text NOT NULL DEFAULT current_user,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text,
    updated_at  timestamptz
);

CREATE TABLE order_items (
    order_id    bigint NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    line_no     smallint NOT NULL,
    product_id  bigint NOT NULL REFERENCES products(id),
    quantity    integer NOT NULL,
    unit_price  numeric(12, 2) NOT NULL,
    created_by  text NOT NULL DEFAULT current_user,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text,
    updated_at  timestamptz,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE payments (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id    bigint NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    amount      numeric(14, 2) NOT NULL,
    method      text NOT NULL,
    paid_at     timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    created_by  text NOT NULL DEFAULT current_user,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text,
    updated_at  timestamptz
);

CREATE TABLE audit_history (
    id          bigserial PRIMARY KEY,
    table_name  text NOT NULL,
    op          text NOT NULL,
    changed_by  text NOT NULL,
    changed_at  timestamptz NOT NULL,
    txid        bigint NOT NULL,
    old_row     jsonb,
    new_row     jsonb
);

CREATE FUNCTION audit_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_by := current_user;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE FUNCTION audit_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_history (table_name, op, changed_by, changed_at, txid, old_row, new_row)
    VALUES (TG_TABLE_NAME, lower(TG_OP), current_user, now(), txid_current(),
            CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END);
    RETURN NULL;
END $$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['customers', 'products', 'orders', 'order_items', 'payments'] LOOP
        EXECUTE format('CREATE TRIGGER %I_stamp BEFORE UPDATE ON %I FOR EACH ROW EXECUTE FUNCTION audit_stamp()', t, t);
        EXECUTE format('CREATE TRIGGER %I_audit AFTER INSERT OR UPDATE OR DELETE ON %I FOR EACH ROW EXECUTE FUNCTION audit_log()', t, t);
    END LOOP;
END $$;

CREATE PUBLICATION ecommerce FOR TABLE customers, products, orders, order_items, payments, audit_history;
"#;

/// Creates the domain schema in the connected database.
pub async fn create_schema(client: &Client) -> Result<()> {
    client.batch_execute(SCHEMA).await?;
    Ok(())
}

/// How much work the generator does.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Customers and products created before the mixed phase.
    pub seed_customers: u32,
    /// Products created before the mixed phase.
    pub seed_products: u32,
    /// Business operations of the mixed phase (each one source transaction).
    pub operations: u32,
    /// Seed of the random generator, so a run can be repeated exactly.
    pub seed: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            seed_customers: 200,
            seed_products: 100,
            operations: 3_000,
            seed: 42,
        }
    }
}

/// What the generator did, by kind of operation.
#[derive(Debug, Default, Clone)]
pub struct WorkloadStats {
    /// Source transactions committed.
    pub transactions: u64,
    /// Orders placed (order + items + payment, one transaction each).
    pub orders_placed: u64,
    /// Orders cancelled (status update and payment deleted in one transaction).
    pub orders_cancelled: u64,
    /// Rows updated outside order placement.
    pub updates: u64,
    /// Rows deleted.
    pub deletes: u64,
}

/// Drives a realistic mix of e-commerce transactions against `client`.
///
/// `progress` is called after each committed transaction with the count so far.
pub async fn run_workload(
    client: &mut Client,
    cfg: &WorkloadConfig,
    mut progress: impl FnMut(u64),
) -> Result<WorkloadStats> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut stats = WorkloadStats::default();
    let total_seed = cfg.seed_customers + cfg.seed_products;
    for i in 0..cfg.seed_customers {
        insert_customer(client, &mut rng, cfg.seed, i).await?;
        stats.transactions += 1;
        progress(stats.transactions);
    }
    for i in 0..cfg.seed_products {
        insert_product(client, &mut rng, cfg.seed, i).await?;
        stats.transactions += 1;
        progress(stats.transactions);
    }
    for op in 0..cfg.operations {
        let roll: u32 = rng.random_range(0..100);
        match roll {
            0..=39 => {
                place_order(client, &mut rng).await?;
                stats.orders_placed += 1;
            }
            40..=54 => {
                stats.updates += advance_order(client, &mut rng).await?;
            }
            55..=64 => {
                if cancel_order(client, &mut rng).await? {
                    stats.orders_cancelled += 1;
                }
            }
            65..=79 => {
                stats.updates += reprice_product(client, &mut rng).await?;
            }
            80..=87 => {
                stats.updates += update_customer(client, &mut rng).await?;
            }
            88..=93 => {
                insert_customer(client, &mut rng, cfg.seed, total_seed + op).await?;
            }
            94..=96 => {
                insert_product(client, &mut rng, cfg.seed, total_seed + op).await?;
            }
            _ => {
                stats.deletes += delete_idle_customer(client).await?;
            }
        }
        stats.transactions += 1;
        progress(stats.transactions);
    }
    Ok(stats)
}

const FIRST: &[&str] = &[
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Leslie",
];
const LAST: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman",
    "Lamport",
];
const TAGS: &[&str] = &["vip", "newsletter", "b2b", "returns", "mobile", "gift"];
const METHODS: &[&str] = &["card", "paypal", "bank_transfer", "voucher"];

/// Names carry the run's seed so repeated runs on one database never collide.
async fn insert_customer(client: &Client, rng: &mut StdRng, run: u64, n: u32) -> Result<()> {
    let first = FIRST[rng.random_range(0..FIRST.len())];
    let last = LAST[rng.random_range(0..LAST.len())];
    let ntags = rng.random_range(0..3);
    let tags: Vec<String> = (0..ntags)
        .map(|_| TAGS[rng.random_range(0..TAGS.len())].to_string())
        .collect();
    let tier = if rng.random_bool(0.1) {
        "gold"
    } else {
        "standard"
    };
    let days: i32 = rng.random_range(7_000..25_000);
    client
        .execute(
            "INSERT INTO customers (email, full_name, tier, tags, birth_date)
             VALUES ($1, $2, $3, $4, date '1950-01-01' + $5::int)",
            &[
                &format!(
                    "{}.{}.{run}.{n}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase()
                ),
                &format!("{first} {last}"),
                &tier,
                &tags,
                &days,
            ],
        )
        .await?;
    Ok(())
}

async fn insert_product(client: &Client, rng: &mut StdRng, run: u64, n: u32) -> Result<()> {
    let cents: i64 = rng.random_range(199..99_999);
    let weight: f32 = rng.random_range(0.05..25.0);
    // Long descriptions are TOASTed, so price updates exercise unchanged TOAST values.
    let words = rng.random_range(2..600);
    let description = (0..words)
        .map(|i| format!("feature{}", (i * 7919 + n) % 1000))
        .collect::<Vec<_>>()
        .join(" ");
    let attributes = format!(
        r#"{{"color": "c{}", "size": {}}}"#,
        rng.random_range(0..12),
        rng.random_range(1..50)
    );
    client
        .execute(
            "INSERT INTO products (sku, name, description, price, stock, weight_kg, attributes)
             VALUES ($1, $2, $3, ($4::bigint)::numeric / 100, $5, $6, $7::text::jsonb)",
            &[
                &format!("SKU-{run}-{n:06}"),
                &format!("Product {n}"),
                &description,
                &cents,
                &rng.random_range(0..500i32),
                &weight,
                &attributes,
            ],
        )
        .await?;
    Ok(())
}

async fn place_order(client: &mut Client, rng: &mut StdRng) -> Result<()> {
    let lines = rng.random_range(1..5i16);
    let qty: Vec<i32> = (0..lines).map(|_| rng.random_range(1..4)).collect();
    let method = METHODS[rng.random_range(0..METHODS.len())];
    let pick: f64 = rng.random();
    let tx = client.transaction().await?;
    let customer = tx
        .query_opt("SELECT id FROM customers ORDER BY id OFFSET floor($1::float8 * (SELECT count(*) FROM customers))::bigint LIMIT 1", &[&pick])
        .await?;
    let Some(customer) = customer else {
        return Ok(());
    };
    let customer: i64 = customer.get(0);
    let order: i64 = tx
        .query_one(
            "INSERT INTO orders (customer_id) VALUES ($1) RETURNING id",
            &[&customer],
        )
        .await?
        .get(0);
    for (i, q) in qty.iter().enumerate() {
        let p: f64 = rng.random();
        tx.execute(
            "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price)
             SELECT $1, $2, id, $3, price FROM products WHERE active
             ORDER BY id OFFSET floor($4::float8 * (SELECT count(*) FROM products WHERE active))::bigint LIMIT 1",
            &[&order, &(i as i16 + 1), q, &p],
        )
        .await?;
    }
    tx.execute(
        "UPDATE orders SET total = (SELECT coalesce(sum(quantity * unit_price), 0) FROM order_items WHERE order_id = $1), status = 'paid' WHERE id = $1",
        &[&order],
    )
    .await?;
    tx.execute("INSERT INTO payments (order_id, amount, method) SELECT id, total, $2 FROM orders WHERE id = $1", &[&order, &method])
        .await?;
    tx.execute(
        "UPDATE products p SET stock = greatest(p.stock - i.quantity, 0) FROM order_items i WHERE i.order_id = $1 AND i.product_id = p.id",
        &[&order],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn advance_order(client: &Client, rng: &mut StdRng) -> Result<u64> {
    let next = if rng.random_bool(0.5) {
        "shipped"
    } else {
        "delivered"
    };
    let n = client
        .execute(
            "UPDATE orders SET status = $1::text::order_status
             WHERE id = (SELECT id FROM orders WHERE status IN ('paid', 'shipped') ORDER BY random() LIMIT 1)",
            &[&next],
        )
        .await?;
    Ok(n)
}

async fn cancel_order(client: &mut Client, _rng: &mut StdRng) -> Result<bool> {
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT id FROM orders WHERE status = 'paid' ORDER BY random() LIMIT 1",
            &[],
        )
        .await?;
    let Some(row) = row else { return Ok(false) };
    let id: i64 = row.get(0);
    tx.execute("DELETE FROM payments WHERE order_id = $1", &[&id])
        .await?;
    tx.execute("DELETE FROM order_items WHERE order_id = $1", &[&id])
        .await?;
    tx.execute(
        "UPDATE orders SET status = 'cancelled', total = 0 WHERE id = $1",
        &[&id],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

async fn reprice_product(client: &Client, rng: &mut StdRng) -> Result<u64> {
    let pct: i32 = rng.random_range(-20..25);
    let n = client
        .execute(
            "UPDATE products SET price = round(price * (100 + $1)::numeric / 100, 2), active = price > 1
             WHERE id = (SELECT id FROM products ORDER BY random() LIMIT 1)",
            &[&pct],
        )
        .await?;
    Ok(n)
}

async fn update_customer(client: &Client, rng: &mut StdRng) -> Result<u64> {
    let tag = TAGS[rng.random_range(0..TAGS.len())];
    let n = client
        .execute(
            "UPDATE customers SET tags = array_append(coalesce(tags, '{}'), $1), tier = CASE WHEN random() < 0.2 THEN 'gold' ELSE tier END
             WHERE id = (SELECT id FROM customers ORDER BY random() LIMIT 1)",
            &[&tag],
        )
        .await?;
    Ok(n)
}

async fn delete_idle_customer(client: &Client) -> Result<u64> {
    let n = client
        .execute(
            "DELETE FROM customers WHERE id = (SELECT c.id FROM customers c
               WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id) ORDER BY random() LIMIT 1)",
            &[],
        )
        .await?;
    Ok(n)
}
