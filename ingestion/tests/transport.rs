//! TLS and unix-socket connections, for the replication and the copy sessions alike, against
//! a real server that refuses plain TCP to the role the ingester logs in as.

#[path = "common/mod.rs"]
mod common;

use common::{assert_bronze_matches, assert_silver_matches, connect, ingest_caught_up, tables};

/// A TLS cluster with a table, its publication and the TLS-only role `secure`.
async fn tls_cluster() -> (domains::PgCluster, tokio_postgres::Client) {
    let pg = tokio::task::spawn_blocking(|| domains::PgCluster::start_with(true))
        .await
        .unwrap()
        .expect("start postgres with TLS");
    pg.create_database("tls").unwrap();
    let client = connect(&pg.url("tls")).await;
    client
        .batch_execute(
            "CREATE ROLE secure LOGIN REPLICATION;
             CREATE TABLE t (id int PRIMARY KEY, v text);
             GRANT SELECT ON t TO secure;
             CREATE PUBLICATION p FOR TABLE t;
             INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 500) g;",
        )
        .await
        .unwrap();
    (pg, client)
}

fn secure_url(host: &str, port: u16, params: &str) -> String {
    format!("postgres://secure@{host}:{port}/tls?{params}")
}

#[tokio::test]
async fn tls_with_a_verified_certificate_carries_the_copy_and_the_stream() {
    let (pg, client) = tls_cluster().await;
    let ca = pg.tls_files().ca;
    let ca = ca.display();
    // The server refuses `secure` in plain text: what follows can only work over TLS.
    let plain = ingest_caught_up(
        &secure_url("localhost", pg.port(), "sslmode=disable"),
        "p",
        tempfile::tempdir().unwrap().path(),
    )
    .await
    .unwrap_err();
    assert!(
        plain.to_string().contains("no encryption") || plain.to_string().contains("pg_hba"),
        "{plain}"
    );

    let dir = tempfile::tempdir().unwrap();
    let url = secure_url(
        "localhost",
        pg.port(),
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    client
        .batch_execute("UPDATE t SET v = 'changed' WHERE id % 7 = 0; DELETE FROM t WHERE id > 450;")
        .await
        .unwrap();
    // The second run streams the changes over TLS (the copy was the first run's).
    let report = ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    assert!(report.commits > 0, "{report:?}");
    for t in tables(&client, "p").await {
        assert_eq!(assert_bronze_matches(&client, dir.path(), &t).await, 450);
        assert_silver_matches(&client, dir.path(), &t).await;
    }

    // `require` encrypts without checking; `verify-ca` checks the chain but not the name
    // (127.0.0.1 is not in the certificate); `verify-full` checks both.
    for (host, params) in [
        ("127.0.0.1", "sslmode=require".to_string()),
        ("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={ca}")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        ingest_caught_up(&secure_url(host, pg.port(), &params), "p", dir.path())
            .await
            .unwrap_or_else(|e| panic!("{params}: {e}"));
    }
    let wrong_name = ingest_caught_up(
        &secure_url(
            "127.0.0.1",
            pg.port(),
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        "p",
        tempfile::tempdir().unwrap().path(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(wrong_name, ingestion::IngestError::Tls { .. }),
        "{wrong_name}"
    );
    assert!(
        wrong_name.to_string().contains("not valid for"),
        "{wrong_name}"
    );
}

#[tokio::test]
async fn a_certificate_from_another_authority_or_a_bad_root_file_is_refused_clearly() {
    let (pg, _client) = tls_cluster().await;
    let other = pg.tls_files().other_ca;
    let err = ingest_caught_up(
        &secure_url(
            "localhost",
            pg.port(),
            &format!("sslmode=verify-full&sslrootcert={}", other.display()),
        ),
        "p",
        tempfile::tempdir().unwrap().path(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ingestion::IngestError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(
        !err.is_retryable(),
        "a bad certificate is not retried: {err}"
    );

    let missing = ingestion::replication::ConnInfo::parse(&secure_url(
        "localhost",
        pg.port(),
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .unwrap_err();
    assert!(
        matches!(missing, ingestion::IngestError::RootCert { .. })
            && missing.to_string().contains("/nonexistent/ca.pem"),
        "{missing}"
    );
}

#[tokio::test]
async fn a_unix_socket_host_carries_the_copy_and_the_stream() {
    let (pg, client) = tls_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    // libpq's form: the socket directory as the host, percent-encoded in the URL.
    let socket = pg.socket_dir().display().to_string().replace('/', "%2F");
    // sslmode=require does not apply to a unix socket (as with libpq).
    let url = format!(
        "postgres://secure@{socket}:{}/tls?sslmode=require",
        pg.port()
    );
    ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    client
        .batch_execute("DELETE FROM t WHERE id <= 10")
        .await
        .unwrap();
    // And the key=value form.
    let kv = format!(
        "host={} port={} user=secure dbname=tls",
        pg.socket_dir().display(),
        pg.port()
    );
    ingest_caught_up(&kv, "p", dir.path()).await.unwrap();
    for t in tables(&client, "p").await {
        assert_eq!(assert_bronze_matches(&client, dir.path(), &t).await, 490);
        assert_silver_matches(&client, dir.path(), &t).await;
    }
}
