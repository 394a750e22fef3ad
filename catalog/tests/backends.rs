//! One behaviour suite for every catalog and storage backend: SQLite on local disk, and
//! PostgreSQL with S3 object storage (a real SeaweedFS), both started by the test.
//!
//! It covers the pointer swap contract, the commit path (including a swap whose
//! acknowledgement is lost, and one whose outcome cannot be learned), snapshot summaries,
//! and listing through the storage.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use catalog::commit::{CommitPath, RowDelta};
use catalog::pointer::PointerStore;
use catalog::{Catalog, CatalogError, NamespaceIdent, TableIdent, Warehouse};
use iceberg::TableCreation;
use iceberg::spec::{
    DataContentType, DataFile, DataFileBuilder, DataFileFormat, NestedField, PrimitiveType, Schema,
    Struct, Type,
};

/// A backend under test, with the servers it needs kept alive.
struct Backend {
    warehouse: Warehouse,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<domains::PgCluster>,
    _s3: Option<domains::SeaweedFs>,
}

fn sqlite_local() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    Backend {
        warehouse: Warehouse::new(dir.path().join("wh")).unwrap(),
        _dir: Some(dir),
        _pg: None,
        _s3: None,
    }
}

async fn postgres_s3() -> Backend {
    let (pg, s3) = tokio::task::spawn_blocking(|| {
        let pg = domains::PgCluster::start().expect("start postgres");
        pg.create_database("catalog").unwrap();
        let s3 = domains::SeaweedFs::start().expect("start SeaweedFS");
        s3.create_bucket("lake").unwrap();
        (pg, s3)
    })
    .await
    .unwrap();
    let props = s3.iceberg_props();
    let warehouse = Warehouse::open("s3://lake/warehouse", Some(&pg.url("catalog")))
        .unwrap()
        .with_storage_props(props);
    Backend {
        warehouse,
        _dir: None,
        _pg: Some(pg),
        _s3: Some(s3),
    }
}

async fn create_table(catalog: &dyn Catalog, name: &str) -> iceberg::table::Table {
    let ns = catalog::ensure_namespace(catalog, "suite").await.unwrap();
    let schema = Schema::builder()
        .with_fields(vec![
            NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
        ])
        .build()
        .unwrap();
    catalog
        .create_table(
            &ns,
            TableCreation::builder()
                .name(name.to_string())
                .schema(schema)
                .build(),
        )
        .await
        .unwrap()
}

/// A data or position-delete file entry (the commit path records it without reading it).
fn file(root: &str, name: &str, content: DataContentType, records: u64, bytes: u64) -> DataFile {
    DataFileBuilder::default()
        .content(content)
        .file_path(format!("{root}/data/{name}.parquet"))
        .file_format(DataFileFormat::Parquet)
        .partition(Struct::empty())
        .partition_spec_id(0)
        .record_count(records)
        .file_size_in_bytes(bytes)
        .build()
        .unwrap()
}

fn ident(name: &str) -> TableIdent {
    TableIdent::new(NamespaceIdent::new("suite".into()), name.to_string())
}

fn delta(marker: &str) -> RowDelta {
    RowDelta {
        properties: HashMap::from([("suite.marker".to_string(), marker.to_string())]),
        ..RowDelta::default()
    }
}

type Hook = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

/// Applies the first swap, runs `meanwhile` (another writer committing on top, say), then
/// reports a lost connection: the caller cannot know its swap applied.
struct LostAck {
    inner: Box<dyn PointerStore>,
    armed: AtomicBool,
    meanwhile: tokio::sync::Mutex<Option<Hook>>,
    /// The first swap fails before reaching the database (nothing applied) instead.
    never_sent: bool,
}

impl LostAck {
    fn new(inner: Box<dyn PointerStore>, meanwhile: Option<Hook>) -> Self {
        Self {
            inner,
            armed: AtomicBool::new(true),
            meanwhile: tokio::sync::Mutex::new(meanwhile),
            never_sent: false,
        }
    }
}

impl std::fmt::Debug for LostAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LostAck")
    }
}

#[async_trait]
impl PointerStore for LostAck {
    async fn compare_and_swap(
        &self,
        table: &TableIdent,
        expected: &str,
        new: &str,
    ) -> Result<bool, sqlx::Error> {
        if self.never_sent && self.armed.swap(false, Ordering::SeqCst) {
            if let Some(hook) = self.meanwhile.lock().await.take() {
                hook().await;
            }
            return Err(sqlx::Error::PoolTimedOut);
        }
        let applied = self.inner.compare_and_swap(table, expected, new).await?;
        if self.armed.swap(false, Ordering::SeqCst) {
            assert!(applied, "the first swap applies");
            if let Some(hook) = self.meanwhile.lock().await.take() {
                hook().await;
            }
            return Err(sqlx::Error::PoolTimedOut);
        }
        Ok(applied)
    }

    async fn current(&self, table: &TableIdent) -> Result<Option<String>, sqlx::Error> {
        self.inner.current(table).await
    }
}

/// A commit path whose first swap never reaches the database, while another writer commits
/// a row delta on table `name` before the retry.
async fn overtaken_before_retry(
    wh: &Warehouse,
    catalog: Arc<dyn Catalog>,
    name: &str,
) -> CommitPath {
    let overtaker = (catalog, wh.commit_path().await.unwrap());
    let name = name.to_string();
    let mut store = LostAck::new(
        wh.catalog_url().pointers().await.unwrap(),
        Some(Box::new(move || {
            Box::pin(async move {
                let (catalog, commits) = overtaker;
                let base = catalog.load_table(&ident(&name)).await.unwrap();
                commits
                    .commit_row_delta(catalog.as_ref(), &base, delta("meanwhile"))
                    .await
                    .expect("another writer commits meanwhile");
            })
        })),
    );
    store.never_sent = true;
    CommitPath::new(Arc::new(store))
}

/// A catalog database that cannot be reached at all.
#[derive(Debug)]
struct Unreachable;

#[async_trait]
impl PointerStore for Unreachable {
    async fn compare_and_swap(
        &self,
        _: &TableIdent,
        _: &str,
        _: &str,
    ) -> Result<bool, sqlx::Error> {
        Err(sqlx::Error::PoolTimedOut)
    }

    async fn current(&self, _: &TableIdent) -> Result<Option<String>, sqlx::Error> {
        Err(sqlx::Error::PoolTimedOut)
    }
}

async fn suite(b: Backend) {
    let wh = &b.warehouse;
    let catalog = wh.open_catalog().await.expect("open catalog");
    let pointers = wh.catalog_url().pointers().await.expect("pointers");

    // The pointer swap contract.
    let table = create_table(catalog.as_ref(), "pointers").await;
    let id = ident("pointers");
    let start = table.metadata_location().unwrap().to_string();
    assert_eq!(pointers.current(&id).await.unwrap(), Some(start.clone()));
    assert_eq!(pointers.current(&ident("missing")).await.unwrap(), None);
    assert!(
        !pointers
            .compare_and_swap(&id, "elsewhere", "x1")
            .await
            .unwrap()
    );
    assert_eq!(pointers.current(&id).await.unwrap(), Some(start.clone()));
    assert!(pointers.compare_and_swap(&id, &start, "x1").await.unwrap());
    assert!(
        !pointers.compare_and_swap(&id, &start, "x1").await.unwrap(),
        "a replayed swap from the old base does not apply again"
    );
    // Many writers from one base: exactly one wins.
    let shared: Arc<dyn PointerStore> = Arc::from(wh.catalog_url().pointers().await.unwrap());
    let mut tasks = Vec::new();
    for k in 0..8 {
        let p = shared.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            p.compare_and_swap(&id, "x1", &format!("y{k}"))
                .await
                .unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap() as u32;
    }
    assert_eq!(wins, 1, "exactly one concurrent swap applies");

    // Commits through the commit path, racing: one wins, the others conflict.
    let commits = wh.commit_path().await.unwrap();
    create_table(catalog.as_ref(), "commits").await;
    let base = catalog.load_table(&ident("commits")).await.unwrap();
    let mut tasks = Vec::new();
    for k in 0..4 {
        let (commits, catalog, base) = (commits.clone(), catalog.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            commits
                .commit_row_delta(catalog.as_ref(), &base, delta(&format!("race{k}")))
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(
                matches!(e, CatalogError::CommitConflict { .. }) && e.is_retryable(),
                "{e}"
            ),
        }
    }
    assert_eq!(ok, 1);
    let t = catalog.load_table(&ident("commits")).await.unwrap();
    let summary = &t.metadata().current_snapshot().unwrap().summary();
    for key in [
        "added-data-files",
        "added-records",
        "total-records",
        "total-data-files",
    ] {
        assert_eq!(
            summary.additional_properties.get(key).map(String::as_str),
            Some("0"),
            "{key} in {summary:?}"
        );
    }

    // Summary counts through appends, deletes and a rewrite: what each snapshot added and
    // removed, and the totals after it (files the commit path never reads, so plain entries).
    create_table(catalog.as_ref(), "counts").await;
    let counted = |t: &iceberg::table::Table, key: &str| -> u64 {
        t.metadata()
            .current_snapshot()
            .unwrap()
            .summary()
            .additional_properties[key]
            .parse()
            .unwrap()
    };
    let base = catalog.load_table(&ident("counts")).await.unwrap();
    let root = base.metadata().location().to_string();
    let c = commits
        .commit_row_delta(
            catalog.as_ref(),
            &base,
            RowDelta {
                data_files: vec![
                    file(&root, "a", DataContentType::Data, 10, 100),
                    file(&root, "b", DataContentType::Data, 20, 200),
                ],
                ..RowDelta::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (
            counted(&c, "added-records"),
            counted(&c, "total-records"),
            counted(&c, "total-data-files"),
            counted(&c, "total-files-size")
        ),
        (30, 30, 2, 300)
    );
    let c = commits
        .commit_row_delta(
            catalog.as_ref(),
            &c,
            RowDelta {
                data_files: vec![file(&root, "c", DataContentType::Data, 5, 50)],
                delete_files: vec![file(&root, "d", DataContentType::PositionDeletes, 3, 30)],
                ..RowDelta::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (
            counted(&c, "added-position-deletes"),
            counted(&c, "total-records"),
            counted(&c, "total-delete-files"),
            counted(&c, "total-position-deletes")
        ),
        (3, 35, 1, 3)
    );
    let c = commits
        .commit_row_delta(
            catalog.as_ref(),
            &c,
            RowDelta {
                data_files: vec![file(&root, "e", DataContentType::Data, 27, 150)],
                removed_files: [
                    format!("{root}/data/a.parquet"),
                    format!("{root}/data/b.parquet"),
                    format!("{root}/data/d.parquet"),
                ]
                .into(),
                operation: Some(iceberg::spec::Operation::Replace),
                ..RowDelta::default()
            },
        )
        .await
        .unwrap();
    let snap = c.metadata().current_snapshot().unwrap();
    assert_eq!(snap.summary().operation, iceberg::spec::Operation::Replace);
    assert_eq!(
        (
            counted(&c, "deleted-data-files"),
            counted(&c, "deleted-records"),
            counted(&c, "removed-position-deletes"),
            counted(&c, "total-data-files"),
            counted(&c, "total-records"),
            counted(&c, "total-delete-files"),
            counted(&c, "total-files-size"),
        ),
        (2, 30, 3, 2, 32, 0, 200)
    );

    // A lost acknowledgement: the swap applied, the caller saw an error. The commit path
    // resolves it to "committed" and the snapshot is there exactly once.
    let lost = CommitPath::new(Arc::new(LostAck::new(
        wh.catalog_url().pointers().await.unwrap(),
        None,
    )));
    let committed = lost
        .commit_row_delta(catalog.as_ref(), &t, delta("lost-ack"))
        .await
        .expect("a lost acknowledgement is resolved as committed");
    let reloaded = catalog.load_table(&ident("commits")).await.unwrap();
    assert_eq!(
        reloaded.metadata_location(),
        committed.metadata_location(),
        "the returned table is the committed one"
    );
    let markers: Vec<_> = reloaded
        .metadata()
        .snapshots()
        .filter(|s| {
            s.summary().additional_properties.get("suite.marker") == Some(&"lost-ack".into())
        })
        .collect();
    assert_eq!(markers.len(), 1);

    // A lost acknowledgement, and before the retry another writer committed on top of ours:
    // the pointer names theirs, whose history holds ours, so ours is committed (reporting a
    // conflict here would make a compaction delete the files it just published).
    let overtaker = (catalog.clone(), wh.commit_path().await.unwrap());
    let overtaken = CommitPath::new(Arc::new(LostAck::new(
        wh.catalog_url().pointers().await.unwrap(),
        Some(Box::new(move || {
            Box::pin(async move {
                let (catalog, commits) = overtaker;
                let base = catalog.load_table(&ident("commits")).await.unwrap();
                commits
                    .commit_row_delta(catalog.as_ref(), &base, delta("on-top"))
                    .await
                    .expect("a writer commits on top of the in-doubt commit");
            })
        })),
    )));
    let reloaded = catalog.load_table(&ident("commits")).await.unwrap();
    overtaken
        .commit_row_delta(catalog.as_ref(), &reloaded, delta("overtaken"))
        .await
        .expect("an applied swap that was overtaken is still committed");
    let after = catalog.load_table(&ident("commits")).await.unwrap();
    let markers: Vec<String> = after
        .metadata()
        .snapshots()
        .filter_map(|s| {
            s.summary()
                .additional_properties
                .get("suite.marker")
                .cloned()
        })
        .collect();
    assert!(
        markers.contains(&"overtaken".to_string()) && markers.contains(&"on-top".to_string()),
        "{markers:?}"
    );
    assert_eq!(
        after
            .metadata()
            .current_snapshot()
            .unwrap()
            .summary()
            .additional_properties["suite.marker"],
        "on-top"
    );
    let reloaded = after;

    // A swap that failed without an answer (here: never applied), and another writer moved
    // the pointer before the retry. A row delta is then a plain conflict (had it applied,
    // its snapshot would be in the current metadata); a metadata-only commit is known only
    // by its file in the metadata history, which can be trimmed, so it stays unknown: never
    // a conflict a caller would redo or clean up after.
    let e = overtaken_before_retry(wh, catalog.clone(), "commits")
        .await
        .commit_row_delta(catalog.as_ref(), &reloaded, delta("in-doubt"))
        .await
        .unwrap_err();
    assert!(
        e.is_conflict(),
        "a row delta with no snapshot in the history: {e}"
    );
    let reloaded = catalog.load_table(&ident("commits")).await.unwrap();
    let e = overtaken_before_retry(wh, catalog.clone(), "commits")
        .await
        .commit_metadata(catalog.as_ref(), &reloaded, |b| {
            b.set_properties(HashMap::from([(
                "suite.in-doubt".to_string(),
                "1".to_string(),
            )]))
        })
        .await
        .unwrap_err();
    assert!(
        e.may_have_committed() && !e.is_conflict(),
        "a metadata-only commit in doubt and overtaken is unknown, not a conflict: {e}"
    );
    let reloaded = catalog.load_table(&ident("commits")).await.unwrap();

    // An unreachable catalog: the outcome is unknown, reported as such, and the metadata
    // file it would have published is kept.
    let unknown = CommitPath::new(Arc::new(Unreachable));
    let e = unknown
        .commit_row_delta(catalog.as_ref(), &reloaded, delta("unknown"))
        .await
        .unwrap_err();
    let CatalogError::CommitOutcomeUnknown {
        metadata_location, ..
    } = &e
    else {
        panic!("expected an unknown outcome, got {e}");
    };
    assert!(e.may_have_committed() && !e.is_retryable());
    assert!(
        reloaded.file_io().exists(metadata_location).await.unwrap(),
        "files of a commit with an unknown outcome are kept"
    );

    // Listing through the storage finds the table's metadata files.
    let listed = wh
        .storage()
        .list(&format!("{}/", reloaded.metadata().location()))
        .await
        .unwrap();
    let metadata_files = listed
        .iter()
        .filter(|f| f.location.ends_with(".metadata.json"))
        .count();
    assert!(metadata_files >= 3, "{listed:?}");
    assert!(
        listed
            .iter()
            .any(|f| Some(f.location.as_str()) == reloaded.metadata_location()),
        "listing names files as the catalog does: {listed:?}"
    );
}

/// A repeated request is never cleared by the work that answered the earlier one, even
/// within the same millisecond or from a host whose clock is behind.
async fn requests_suite(b: &Backend) {
    let requests = b.warehouse.catalog_url().requests().await.unwrap();
    let kind = catalog::requests::RESYNC;
    requests.add(kind, "t", "first").await.unwrap();
    let first = requests.pending(kind).await.unwrap();
    assert_eq!(first.len(), 1);
    let asked_at = first[0].1;
    // Asked again at once (same millisecond, most likely): it moves past `asked_at`.
    requests.add(kind, "t", "again").await.unwrap();
    requests.done(kind, "t", asked_at).await.unwrap();
    let left = requests.pending(kind).await.unwrap();
    assert_eq!(
        left.len(),
        1,
        "the repeat was cleared with the first: {left:?}"
    );
    assert!(left[0].1 > asked_at);
    requests.done(kind, "t", left[0].1).await.unwrap();
    assert!(requests.pending(kind).await.unwrap().is_empty());

    // The first request came from a host whose clock is an hour ahead of the one repeating it.
    requests.add(kind, "u", "fast clock").await.unwrap();
    let ahead =
        "UPDATE bitvelocity_requests SET requested_at = requested_at + 3600000 WHERE target = 'u'";
    match b.warehouse.catalog_url() {
        catalog::pointer::CatalogUrl::Sqlite(url) => {
            let db = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query(ahead).execute(&db).await.unwrap();
        }
        catalog::pointer::CatalogUrl::Postgres(url) => {
            let db = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(ahead).execute(&db).await.unwrap();
        }
    }
    let asked_at = requests.pending(kind).await.unwrap()[0].1;
    requests.add(kind, "u", "slow clock").await.unwrap();
    requests.done(kind, "u", asked_at).await.unwrap();
    assert_eq!(
        requests.pending(kind).await.unwrap().len(),
        1,
        "a repeat from a host with a slower clock was cleared unanswered"
    );
}

#[tokio::test]
async fn sqlite_on_local_disk() {
    let b = sqlite_local();
    requests_suite(&b).await;
    suite(b).await;
}

#[tokio::test]
async fn postgres_on_s3() {
    let b = postgres_s3().await;
    requests_suite(&b).await;
    suite(b).await;
}
