//! `bitvelocity serve` end to end: a warehouse written by the ingester from a
//! project-managed PostgreSQL, the real server process, and the clients users use (HTTP with
//! `requests`, Arrow Flight SQL with the Python ADBC driver). The same cases run through
//! every door: joins, aggregates, parameters and time travel answer exactly PostgreSQL's
//! rows; the grant cases (bronze reached directly, through a CTE, a subquery, listings)
//! are refused alike and name the table; no or wrong credentials are refused; statements
//! that are not queries are refused.

#[path = "../../ingestion/tests/common/mod.rs"]
mod common;
mod served;

use std::collections::BTreeMap;
use std::process::Command;

use served::{Served, pg_text, serve};

use domains::ecommerce::{self, WorkloadConfig};
use serde_json::{Value, json};

/// What a case must answer for a user.
#[derive(Debug, Clone)]
enum Want {
    /// Exactly these rows (as text), in order.
    Rows(Vec<Vec<Option<String>>>),
    /// A denial naming this table.
    Denied(&'static str),
    /// A refusal of a statement that is not a query.
    Refused,
    /// A refusal for want of (valid) credentials.
    Unauthenticated,
    /// A query error (bad SQL).
    QueryError,
}

struct Case {
    name: &'static str,
    sql: String,
    params: Vec<Value>,
    /// Asked as a consistent read (HTTP `"consistent": true`, the Flight SQL call header,
    /// `SET bitvelocity.consistent_reads = on`).
    consistent: bool,
    /// The answer for the analyst (silver only), the engineer (everything), and a caller
    /// without valid credentials is always `Unauthenticated`.
    analyst: Want,
    engineer: Want,
}

/// The outside JWT issuer's secret (HS256), handed to the server by environment.
const JWT_SECRET_VAR: &str = "BITVELOCITY_TEST_JWT_SECRET";
const JWT_SECRET: &str = "a-test-issuer-secret-that-is-long-enough";

/// A token from the outside issuer for `sub` in `role`, expiring `exp_in` seconds from now.
fn jwt(sub: &str, role: &str, exp_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({
        "sub": sub, "role": role, "exp": now + exp_in,
        "iss": "test-idp", "aud": "bitvelocity",
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_answers_the_same_rows_as_postgres_and_refuses_the_same_requests() {
    doors(false).await;
}

/// The same over TLS on every door (clients verifying the server's certificate), where the
/// PostgreSQL door also takes the key or a JWT as a cleartext password; and a server whose
/// TLS cannot start does not start at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_answers_the_same_over_tls_and_never_falls_back_to_plaintext() {
    doors(true).await;
}

/// A self-signed certificate for 127.0.0.1 (and its key) in `dir`.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

async fn doors(tls: bool) {
    let python = std::env::var("BITVELOCITY_PYTHON").expect(
        "BITVELOCITY_PYTHON is not set: run the suite with scripts/test, which builds the venv with the door clients",
    );
    let dir = tempfile::tempdir().unwrap();
    let wh_dir = dir.path().join("wh");
    let wh = catalog::Warehouse::new(&wh_dir).unwrap();
    let (_pg, url) = common::start_pg("doors").await;
    let mut client = common::connect(&url).await;
    ecommerce::create_schema(&client).await.unwrap();
    let first = WorkloadConfig {
        operations: 300,
        ..WorkloadConfig::default()
    };
    ecommerce::run_workload(&mut client, &first, |_| {})
        .await
        .unwrap();
    common::ingest_caught_up(&url, ecommerce::PUBLICATION, &wh)
        .await
        .unwrap();
    // A point to travel back to: silver.customers now, and PostgreSQL's rows now.
    let cat = wh.open_catalog().await.unwrap();
    let snapshot = cat
        .load_table(&catalog::TableIdent::from_strs(["silver", "customers"]).unwrap())
        .await
        .unwrap()
        .metadata()
        .current_snapshot()
        .unwrap()
        .snapshot_id();
    let customers_then = pg_text(&client, "SELECT id, email FROM customers ORDER BY id").await;
    // The consistent position the ingester published with it.
    let silver_ns = catalog::NamespaceIdent::new("silver".to_string());
    let position_then: u64 = cat.get_namespace(&silver_ns).await.unwrap().properties()
        [lakehouse::layout::CONSISTENT_LSN_PROPERTY]
        .parse()
        .unwrap();
    let more = WorkloadConfig {
        seed_customers: 0,
        seed_products: 0,
        operations: 400,
        seed: 11,
    };
    ecommerce::run_workload(&mut client, &more, |_| {})
        .await
        .unwrap();
    client
        .batch_execute("UPDATE customers SET email = 'changed-' || email WHERE id % 4 = 0")
        .await
        .unwrap();
    let report = common::ingest_caught_up(&url, ecommerce::PUBLICATION, &wh)
        .await
        .unwrap();
    assert!(report.stopped.is_empty(), "{report:?}");
    let customers_now = pg_text(&client, "SELECT id, email FROM customers ORDER BY id").await;
    let (rows_then, rows_now) = (customers_then.clone(), customers_now.clone());
    // The window between an ingest batch's table commits and its consistent position
    // (or a crash inside it): every table is ahead of the position last published. Here
    // the position is put back where the first run left it, and tables are ahead by a
    // whole run, so a consistent read must answer the first run's rows.
    cat.update_namespace(
        &silver_ns,
        std::collections::HashMap::from([(
            lakehouse::layout::CONSISTENT_LSN_PROPERTY.to_string(),
            position_then.to_string(),
        )]),
    )
    .await
    .unwrap();
    assert_ne!(
        customers_then,
        pg_text(&client, "SELECT id, email FROM customers ORDER BY id").await,
        "time travel needs a past that differs from now"
    );
    let bronze_customers = {
        let ctx = lakehouse::query::session(cat.clone()).await.unwrap();
        let b = lakehouse::query::run(&ctx, "SELECT count(*) FROM bronze.customers")
            .await
            .unwrap();
        use arrow::array::AsArray;
        b[0].column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
    };

    let join_sql = "SELECT c.id, c.email, count(o.id) AS orders, CAST(sum(o.total) AS VARCHAR) AS spent \
                    FROM customers c JOIN orders o ON o.customer_id = c.id \
                    GROUP BY c.id, c.email ORDER BY c.id";
    let join = pg_text(&client, join_sql).await;
    assert!(join.len() > 10, "the workload placed too few orders");
    // A customer that exists (the workload deletes some).
    let some_id: i64 = client
        .query_one("SELECT min(id) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    let by_id = pg_text(
        &client,
        &format!("SELECT id, email, tier FROM customers WHERE id = {some_id}"),
    )
    .await;
    assert_eq!(by_id.len(), 1);
    let by_status = pg_text(
        &client,
        "SELECT count(*), CAST(sum(total) AS VARCHAR) FROM orders WHERE status = 'paid' AND customer_id > 2",
    )
    .await;
    let mut silver_tables: Vec<Vec<Option<String>>> = ecommerce::TABLES
        .iter()
        .map(|t| vec![Some("silver".to_string()), Some(t.to_string())])
        .collect();
    silver_tables.sort();
    let mut all_tables: Vec<Vec<Option<String>>> = ["bronze", "silver"]
        .iter()
        .flat_map(|ns| {
            ecommerce::TABLES
                .iter()
                .map(move |t| vec![Some(ns.to_string()), Some(t.to_string())])
        })
        .collect();
    all_tables.sort();
    let count = |n: i64| Want::Rows(vec![vec![Some(n.to_string())]]);
    let both = |w: Want| (w.clone(), w);
    let mut cases = Vec::new();
    let mut case = |name, sql: String, params: Vec<Value>, (analyst, engineer): (Want, Want)| {
        cases.push(Case {
            name,
            sql,
            params,
            consistent: name.starts_with("consistent"),
            analyst,
            engineer,
        })
    };
    case(
        "join_aggregate",
        join_sql.to_string(),
        vec![],
        both(Want::Rows(join)),
    );
    case(
        "int_parameter",
        "SELECT id, email, tier FROM customers WHERE id = $1".into(),
        vec![json!(some_id)],
        both(Want::Rows(by_id)),
    );
    case(
        "text_and_int_parameters",
        "SELECT count(*), CAST(sum(total) AS VARCHAR) FROM orders WHERE status = $1 AND customer_id > $2"
            .into(),
        vec![json!("paid"), json!(2)],
        both(Want::Rows(by_status)),
    );
    case(
        "time_travel",
        format!("SELECT id, email FROM as_of('silver.customers', {snapshot}) ORDER BY id"),
        vec![],
        both(Want::Rows(customers_then.clone())),
    );
    // A consistent read, then the same query not asked consistent on the same connection.
    case(
        "consistent_read",
        "SELECT id, email FROM customers ORDER BY id".into(),
        vec![],
        both(Want::Rows(customers_then.clone())),
    );
    case(
        "current_read",
        "SELECT id, email FROM customers ORDER BY id".into(),
        vec![],
        both(Want::Rows(customers_now)),
    );
    case(
        "consistent_read_with_a_parameter",
        "SELECT id, email FROM customers WHERE id > $1 ORDER BY id".into(),
        vec![json!(0)],
        both(Want::Rows(customers_then)),
    );
    case(
        "bronze_directly",
        "SELECT count(*) FROM bronze.customers".into(),
        vec![],
        (Want::Denied("bronze.customers"), count(bronze_customers)),
    );
    case(
        "bronze_through_a_cte",
        "WITH x AS (SELECT * FROM bronze.customers) SELECT count(*) FROM x".into(),
        vec![],
        (Want::Denied("bronze.customers"), count(bronze_customers)),
    );
    case(
        "bronze_through_a_subquery_and_join",
        "SELECT count(*) FROM customers c WHERE EXISTS (SELECT 1 FROM bronze.customers b JOIN orders o ON o.customer_id = b.id WHERE b.id = c.id) AND c.id < 0"
            .into(),
        vec![],
        (Want::Denied("bronze.customers"), count(0)),
    );
    case(
        "bronze_through_as_of",
        format!("SELECT count(*) FROM as_of('bronze.customers', {snapshot})"),
        vec![],
        (Want::Denied("bronze.customers"), Want::QueryError),
    );
    case(
        "listing",
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema IN ('bronze', 'silver') ORDER BY table_schema, table_name".into(),
        vec![],
        (Want::Rows(silver_tables), Want::Rows(all_tables)),
    );
    case(
        "insert",
        "INSERT INTO customers (id, email) VALUES (1, 'x')".into(),
        vec![],
        both(Want::Refused),
    );
    case(
        "copy_out",
        "COPY customers TO '/tmp/bitvelocity-doors-leak.csv'".into(),
        vec![],
        both(Want::Refused),
    );
    case(
        "external_table",
        "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/passwd'".into(),
        vec![],
        both(Want::Refused),
    );
    case(
        "drop",
        "DROP TABLE customers".into(),
        vec![],
        both(Want::Refused),
    );
    case(
        "bad_sql",
        "SELEC id FROM customers".into(),
        vec![],
        both(Want::QueryError),
    );

    // Users: two roles, no key, a wrong key.
    let (ana_key, ana_sha) = serving::auth::new_key();
    let (eve_key, eve_sha) = serving::auth::new_key();
    let config = dir.path().join("serve.toml");
    let tls_files = tls.then(|| certificate(dir.path()));
    let tls_section = |key: &std::path::Path| match &tls_files {
        Some((cert, _)) => format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        None => String::new(),
    };
    if let Some((_, key)) = &tls_files {
        // A key that is not there: the server must refuse to start, not serve plaintext.
        let broken = dir.path().join("broken.toml");
        std::fs::write(
            &broken,
            format!(
                "[roles.analyst]\nread = [\"silver.*\"]\n{}",
                tls_section(&key.with_extension("missing"))
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_bitvelocity"))
            .args(["serve", "--warehouse"])
            .arg(&wh_dir)
            .arg("--config")
            .arg(&broken)
            .args(["--http", "127.0.0.1:0", "--flight", "127.0.0.1:0"])
            .args(["--pgwire", "127.0.0.1:0"])
            .output()
            .expect("run serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "served with a missing TLS key");
        assert!(stderr.contains("server.missing"), "{stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(" on "),
            "a door answered: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let tls_config = tls_files
        .as_ref()
        .map(|(_, key)| tls_section(key))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            r#"
[roles.analyst]
read = ["silver.*"]
[roles.engineer]
read = ["*"]
[[users]]
name = "ana"
role = "analyst"
api_key_sha256 = "{ana_sha}"
pg_scram_sha256 = "{ana_scram}"
[[users]]
name = "eve"
role = "engineer"
api_key_sha256 = "{eve_sha}"
pg_scram_sha256 = "{eve_scram}"
[jwt]
hs256_secret_env = "{JWT_SECRET_VAR}"
issuer = "test-idp"
audience = "bitvelocity"
{tls_config}"#,
            ana_scram = serving::pg::Verifier::new(&ana_key).to_text(),
            eve_scram = serving::pg::Verifier::new(&eve_key).to_text(),
        ),
    )
    .unwrap();
    let served = serve(&wh_dir, &config, &[(JWT_SECRET_VAR, JWT_SECRET)]);
    let cases_file = dir.path().join("cases.json");
    let cases_json: Vec<Value> = cases
        .iter()
        .map(|c| json!({"name": c.name, "sql": c.sql, "params": c.params, "consistent": c.consistent}))
        .collect();
    std::fs::write(&cases_file, serde_json::to_string(&cases_json).unwrap()).unwrap();
    let users_file = dir.path().join("users.json");
    let (wrong_key, _) = serving::auth::new_key();
    std::fs::write(
        &users_file,
        json!({
            "ana": ana_key, "eve": eve_key, "nobody": null, "mallory": wrong_key,
            "jay": {"jwt": jwt("jay", "analyst", 600)},
            "late": {"jwt": jwt("late", "analyst", -120)},
        })
        .to_string(),
    )
    .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/doors.py");
    let out = Command::new(&python)
        .arg(script)
        .arg("--cases")
        .arg(&cases_file)
        .arg("--users")
        .arg(&users_file)
        .args(["--http", &served.http, "--flight", &served.flight])
        .args(["--pgwire", &served.pgwire])
        .args(
            tls_files
                .iter()
                .flat_map(|(cert, _)| [std::ffi::OsStr::new("--tls-ca"), cert.as_os_str()]),
        )
        .output()
        .expect("run the door clients");
    assert!(
        out.status.success(),
        "door clients failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>> =
        serde_json::from_slice(&out.stdout).unwrap();

    let mut failures = Vec::new();
    let mut checked = 0;
    for door in ["http", "flight", "pgwire"] {
        let doors = answers
            .get(door)
            .unwrap_or_else(|| panic!("no answers from the {door} door"));
        for user in ["ana", "eve", "nobody", "mallory", "jay", "late"] {
            for case in &cases {
                let want = match (user, door) {
                    ("ana", _) => &case.analyst,
                    ("eve", _) => &case.engineer,
                    // A JWT goes where a key does; PostgreSQL takes one as a cleartext
                    // password, which this door accepts only over TLS (not configured here).
                    ("jay", "http" | "flight") => &case.analyst,
                    ("jay", "pgwire") if tls => &case.analyst,
                    _ => &Want::Unauthenticated,
                };
                let got = &doors[user][case.name];
                checked += 1;
                if let Err(why) = matches(want, got) {
                    failures.push(format!("{door} {user} {}: {why}", case.name));
                }
                // The HTTP answer names the position a consistent read read at.
                if door == "http" && got.get("rows").is_some() {
                    let position = ingestion::Lsn(position_then).to_string();
                    let want = if case.consistent {
                        json!(position)
                    } else {
                        Value::Null
                    };
                    if got["position"] != want {
                        failures.push(format!(
                            "http {user} {}: position {} instead of {want}",
                            case.name, got["position"]
                        ));
                    }
                }
            }
        }
        if door == "flight" {
            // A ticket the client made itself is authorized like any statement.
            for (user, want) in [
                ("ana", Want::Denied("bronze.customers")),
                ("eve", count(bronze_customers)),
            ] {
                checked += 1;
                if let Err(why) = matches(&want, &doors[user]["hand_made_ticket"]) {
                    failures.push(format!("flight {user} hand-made ticket: {why}"));
                }
                // The ticket alone asks for the consistent read, without the call header.
                checked += 1;
                let got = &doors[user]["hand_made_consistent_ticket"];
                if let Err(why) = matches(&Want::Rows(rows_then.clone()), got) {
                    failures.push(format!("flight {user} consistent hand-made ticket: {why}"));
                }
            }
            // The catalog probe a BI tool or notebook makes: only granted tables listed.
            for (user, tables) in [("ana", vec!["silver"]), ("eve", vec!["bronze", "silver"])] {
                let probe = &doors[user]["catalog"];
                let mut want: Vec<String> = tables
                    .iter()
                    .flat_map(|ns| ecommerce::TABLES.iter().map(move |t| format!("{ns}.{t}")))
                    .collect();
                want.sort();
                assert_eq!(probe["vendor"], json!("BitVelocity"), "{probe}");
                assert_eq!(probe["catalogs"], json!(["bitvelocity"]), "{probe}");
                assert_eq!(probe["tables"], json!(want), "{user}: {probe}");
                let columns = probe["customers_columns"].as_array().unwrap();
                assert!(
                    columns.contains(&json!("id")) && columns.contains(&json!("email")),
                    "{probe}"
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} answers differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, 3 * 6 * cases.len() + 4);
    if !tls {
        hostile_input_leaves_the_server_answering(
            &served,
            &python,
            &ana_key,
            dir.path(),
            &cases_file,
            &cases,
        );
        large_results_stream_through_the_postgres_door_in_bounded_memory(&served, &ana_key).await;
        postgres_settings_choose_consistent_reads(&served, &ana_key, &rows_then, &rows_now).await;
    }
    let ca = tls_files.as_ref().map(|(cert, _)| cert.as_path());
    psql_lists_and_describes_granted_tables(&served.pgwire, &ana_key, &eve_key, ca);
    // Nothing was written where a refused COPY pointed.
    assert!(!std::path::Path::new("/tmp/bitvelocity-doors-leak.csv").exists());
}

/// Whether `got` (a door's answer) is what `want` says.
fn matches(want: &Want, got: &Value) -> Result<(), String> {
    let kind = got["error"]["kind"].as_str();
    let message = got["error"]["message"].as_str().unwrap_or_default();
    let ok = match want {
        Want::Rows(rows) => {
            let rows = json!(rows);
            if got["rows"] == rows {
                return Ok(());
            }
            return Err(format!("want rows {rows}, got {got}"));
        }
        Want::Denied(table) => {
            kind == Some("permission_denied")
                && message.contains(&format!("permission denied for table {table}"))
        }
        Want::Refused => matches!(kind, Some("permission_denied" | "not_allowed")),
        Want::Unauthenticated => kind == Some("unauthenticated"),
        Want::QueryError => matches!(kind, Some("query_error" | "bad_request")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("want {want:?}, got {got}"))
    }
}

/// `psql`'s own catalog commands (`\\dt`, `\\d <table>`) over the PostgreSQL door: listings
/// show only granted tables, and a table's columns are described.
fn psql_lists_and_describes_granted_tables(
    addr: &str,
    ana_key: &str,
    eve_key: &str,
    ca: Option<&std::path::Path>,
) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let ssl = match ca {
        Some(ca) => format!("sslmode=verify-full sslrootcert={}", ca.display()),
        None => "sslmode=disable".to_string(),
    };
    let psql = |user: &str, key: &str, command: &str| {
        let out = Command::new("psql")
            .arg(format!(
                "host={host} port={port} dbname=bitvelocity user={user} {ssl}"
            ))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", command])
            .env("PGPASSWORD", key)
            .output()
            .expect("run psql");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "psql {command} as {user}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    if ca.is_some() {
        // With TLS configured, a client that does not ask for it is refused.
        let out = Command::new("psql")
            .arg(format!(
                "host={host} port={port} dbname=bitvelocity user=ana sslmode=disable"
            ))
            .args(["-X", "-c", "SELECT 1"])
            .env("PGPASSWORD", ana_key)
            .output()
            .expect("run psql");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("requires TLS"),
            "a plaintext PostgreSQL client got in: {stderr}"
        );
    }
    let listed = psql("ana", ana_key, "\\dt *.*");
    for t in ecommerce::TABLES {
        assert!(
            listed.contains(&format!("silver|{t}|")),
            "{t} not listed:\n{listed}"
        );
    }
    assert!(!listed.contains("bronze|"), "ana sees bronze:\n{listed}");
    let listed = psql("eve", eve_key, "\\dt bronze.*");
    assert!(listed.contains("bronze|customers|"), "{listed}");
    let described = psql("ana", ana_key, "\\d silver.customers");
    for column in ["id", "email", "full_name", "tier"] {
        assert!(
            described
                .lines()
                .any(|l| l.starts_with(&format!("{column}|"))),
            "{column} not described:\n{described}"
        );
    }
}

/// A result far larger than the server's working memory, read through the PostgreSQL
/// door by the extended protocol (as psycopg, JDBC and tokio-postgres run every
/// parameterized query) and by the simple one: every row arrives, and the server's peak
/// memory stays far below the result's size (rows go out as produced, never collected).
async fn large_results_stream_through_the_postgres_door_in_bounded_memory(
    served: &Served,
    ana_key: &str,
) {
    let client = pg_door_client(served, "ana", ana_key).await;
    let customers: i64 = client
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    // About 4 million rows of ~100 bytes: 400 MB as rows, whatever the warehouse's size.
    let copies = 4_000_000 / (customers * customers) + 1;
    let sql = format!(
        "SELECT a.id, a.email, b.email AS other, g.value AS copy \
         FROM customers a CROSS JOIN customers b CROSS JOIN generate_series(1, {copies}) g"
    );
    let want = (customers * customers * copies) as u64;
    let pid = served.pid();
    for extended in [true, false] {
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
        let before = rss_kib(pid);
        let got = if extended {
            let rows = client
                .query_raw(sql.as_str(), std::iter::empty::<i64>())
                .await
                .unwrap();
            futures::pin_mut!(rows);
            let mut n = 0u64;
            while let Some(row) = futures::StreamExt::next(&mut rows).await {
                let row = row.unwrap();
                let _: (&str, &str) = (row.get(1), row.get(2));
                n += 1;
            }
            n
        } else {
            let messages = client.simple_query_raw(&sql).await.unwrap();
            futures::pin_mut!(messages);
            let mut n = 0u64;
            while let Some(m) = futures::StreamExt::next(&mut messages).await {
                if let tokio_postgres::SimpleQueryMessage::Row(_) = m.unwrap() {
                    n += 1;
                }
            }
            n
        };
        assert_eq!(got, want, "extended protocol: {extended}");
        let peak = peak_kib(pid);
        println!(
            "{want} rows over the PostgreSQL door (extended: {extended}): server RSS {before} KiB before, peak {peak} KiB"
        );
        assert!(
            peak < before + 200 * 1024,
            "the server held the result: RSS {before} KiB before, peak {peak} KiB (extended: {extended})"
        );
    }
}

/// `bitvelocity.consistent_reads` on a PostgreSQL connection behaves as a PostgreSQL
/// setting: SHOW (both protocols), SET with quoted names, RESET and DISCARD ALL (what
/// poolers send between clients) turn it off, SET LOCAL and unknown `bitvelocity.` names are
/// refused, and a SET earlier in the same message applies to the query after it.
async fn postgres_settings_choose_consistent_reads(
    served: &Served,
    ana_key: &str,
    then: &[Vec<Option<String>>],
    now: &[Vec<Option<String>>],
) {
    let client = pg_door_client(served, "ana", ana_key).await;
    let read = "SELECT id, email FROM customers ORDER BY id";
    async fn show(c: &tokio_postgres::Client) -> (String, String) {
        let simple = pg_text(c, "SHOW bitvelocity.consistent_reads").await[0][0]
            .clone()
            .unwrap();
        let extended: String = c
            .query_one("SHOW bitvelocity.consistent_reads", &[])
            .await
            .unwrap()
            .get(0);
        (simple, extended)
    }
    let on = ("on".to_string(), "on".to_string());
    let off = ("off".to_string(), "off".to_string());
    assert_eq!(show(&client).await, off);
    assert_eq!(pg_text(&client, read).await, now);
    client
        .batch_execute("SET bitvelocity.consistent_reads = on")
        .await
        .unwrap();
    assert_eq!(show(&client).await, on);
    assert_eq!(pg_text(&client, read).await, then);
    client
        .batch_execute("RESET bitvelocity.consistent_reads")
        .await
        .unwrap();
    assert_eq!(show(&client).await, off);
    client
        .batch_execute(r#"SET "bitvelocity"."consistent_reads" TO true"#)
        .await
        .unwrap();
    assert_eq!(show(&client).await, on);
    client.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(show(&client).await, off);
    client
        .batch_execute("SET bitvelocity.consistent_reads = on")
        .await
        .unwrap();
    client.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(show(&client).await, off);
    // One message: the SET applies to the query after it.
    let together = pg_text(
        &client,
        &format!("SET bitvelocity.consistent_reads = on; {read}"),
    )
    .await;
    assert_eq!(together, then);
    client
        .batch_execute("SET bitvelocity.consistent_reads = off")
        .await
        .unwrap();
    for (sql, code) in [
        ("SET LOCAL bitvelocity.consistent_reads = on", "0A000"),
        ("SET bitvelocity.consistent_read = on", "42704"),
        ("SET bitvelocity.consistent_reads = maybe", "22023"),
    ] {
        let e = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some(code), "{sql}: {e}");
    }
    assert_eq!(show(&client).await, off);
}

/// A tokio-postgres client of the PostgreSQL door logged in as `user` (SCRAM, plaintext).
async fn pg_door_client(served: &Served, user: &str, key: &str) -> tokio_postgres::Client {
    let (host, port) = served.pgwire.rsplit_once(':').unwrap();
    let (client, conn) = tokio_postgres::Config::new()
        .host(host)
        .port(port.parse().unwrap())
        .user(user)
        .password(key)
        .dbname("bitvelocity")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// The server's peak resident memory since it was last reset, KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

/// The server's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

/// A thousand malformed or hostile requests per door (tests/python/hostile.py): every one
/// refused, the server still answers the analyst's queries exactly, and its memory did
/// not grow without bound.
fn hostile_input_leaves_the_server_answering(
    served: &Served,
    python: &str,
    ana_key: &str,
    dir: &std::path::Path,
    cases_file: &std::path::Path,
    cases: &[Case],
) {
    let pid = served.pid();
    let before = rss_kib(pid);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/hostile.py");
    let out = Command::new(python)
        .arg(script)
        .args(["--http", &served.http, "--flight", &served.flight])
        .args([
            "--pgwire",
            &served.pgwire,
            "--user",
            "ana",
            "--key",
            ana_key,
        ])
        .args([
            "--expired-jwt",
            &jwt("ana", "analyst", -120),
            "--count",
            "1000",
        ])
        .output()
        .expect("run the hostile clients");
    assert!(
        out.status.success(),
        "hostile clients failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    for door in ["http", "rest", "flight", "pgwire"] {
        let r = &report[door];
        assert!(r["sent"].as_u64().unwrap() >= 1000, "{door}: {r}");
        assert_eq!(
            r["unexpected"],
            json!([]),
            "{door}: hostile requests not refused"
        );
    }
    let after = rss_kib(pid);
    println!("server RSS {before} KiB before 4,000 hostile requests, {after} KiB after");
    assert!(
        after < before + 512 * 1024,
        "server RSS grew from {before} KiB to {after} KiB"
    );
    // Still answering, exactly: the analyst's cases through every door again.
    let users = dir.join("ana.json");
    std::fs::write(&users, json!({ "ana": ana_key }).to_string()).unwrap();
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/python/doors.py"
        ))
        .arg("--cases")
        .arg(cases_file)
        .arg("--users")
        .arg(&users)
        .args(["--http", &served.http, "--flight", &served.flight])
        .args(["--pgwire", &served.pgwire])
        .output()
        .expect("run the door clients");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>> =
        serde_json::from_slice(&out.stdout).unwrap();
    for door in ["http", "flight", "pgwire"] {
        for case in cases {
            if let Err(why) = matches(&case.analyst, &answers[door]["ana"][case.name]) {
                panic!("after hostile input, {door} {}: {why}", case.name);
            }
        }
    }
}
