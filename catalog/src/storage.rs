//! Where a warehouse's files live: local disk or S3-compatible object storage.
//!
//! iceberg 0.10 reads and writes every file through a pluggable `Storage`; this module
//! provides one over `object_store` 0.13 (the store DataFusion itself reads through), so
//! data files, delete files, manifests, metadata and index checkpoints all take one path,
//! and orphan removal can list what a table's folder really holds (iceberg's `Storage`
//! cannot list). ADR 0006 says why `object_store` rather than OpenDAL.
//!
//! Durability: a local write is complete only after the file and its directory are
//! fsynced (`object_store`'s local store renames a staged file into place but never
//! fsyncs), so a metadata file and everything it references are on disk before the
//! catalog pointer moves. An S3 `PUT` (or a completed multipart upload) is durable and
//! visible to every reader when it returns.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, S3_ACCESS_KEY_ID, S3_ENDPOINT,
    S3_PATH_STYLE_ACCESS, S3_REGION, S3_SECRET_ACCESS_KEY, S3_SESSION_TOKEN, Storage,
    StorageConfig, StorageFactory,
};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::{CatalogError, Result};

/// A warehouse location, parsed once so an unknown scheme is refused up front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory (absolute).
    Local(PathBuf),
    /// An S3 bucket and a key prefix (no leading or trailing `/`; may be empty).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix under the bucket.
        prefix: String,
    },
}

impl Location {
    /// Parses a warehouse argument: a plain path, `file://<abs path>`, or `s3://bucket/prefix`
    /// (`s3a://` too). Any other `scheme:` is an error, never a local folder named after it.
    pub fn parse(text: &str) -> Result<Self> {
        let unsupported = |reason: &str| CatalogError::UnsupportedWarehouse {
            location: text.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = text.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(unsupported("a file:// location needs an absolute path"));
            }
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        for scheme in ["s3://", "s3a://"] {
            if let Some(rest) = text.strip_prefix(scheme) {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(unsupported("no bucket named"));
                }
                return Ok(Location::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.trim_matches('/').to_string(),
                });
            }
        }
        if let Some((scheme, _)) = text.split_once(':')
            && !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            && !scheme.contains('/')
        {
            return Err(unsupported(&format!(
                "unknown scheme {scheme}: use a local path, file:///<path> or s3://<bucket>/<prefix>"
            )));
        }
        if text.is_empty() {
            return Err(unsupported("empty location"));
        }
        Ok(Location::Local(PathBuf::from(text)))
    }

    /// The location as a URL (`file:///abs` or `s3://bucket/prefix`), without a trailing `/`.
    pub fn url(&self) -> String {
        match self {
            Location::Local(p) => format!("file://{}", p.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// Storage properties (iceberg's `s3.*` keys) taken from the standard AWS environment:
/// `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION` (or `AWS_DEFAULT_REGION`). Path-style addressing is the default, so a local
/// endpoint such as SeaweedFS or MinIO works as it is.
pub fn s3_props_from_env() -> HashMap<String, String> {
    let mut props = HashMap::new();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    for (key, vars) in [
        (
            S3_ENDPOINT,
            &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"][..],
        ),
        (S3_ACCESS_KEY_ID, &["AWS_ACCESS_KEY_ID"][..]),
        (S3_SECRET_ACCESS_KEY, &["AWS_SECRET_ACCESS_KEY"][..]),
        (S3_SESSION_TOKEN, &["AWS_SESSION_TOKEN"][..]),
        (S3_REGION, &["AWS_REGION", "AWS_DEFAULT_REGION"][..]),
    ] {
        if let Some(v) = vars.iter().find_map(|k| env(k)) {
            props.insert(key.to_string(), v);
        }
    }
    props
        .entry(S3_PATH_STYLE_ACCESS.to_string())
        .or_insert_with(|| "true".to_string());
    props
}

/// Storage property confining a `FileIO` to one folder (a table's location): every file
/// outside it is refused, whatever a table's metadata names. Tables that clients outside
/// the platform write (through the REST catalog, with their own access to storage) are
/// read through such a `FileIO`, so no metadata they wrote can make the platform read or
/// delete another table's files, or a file outside the warehouse.
pub const CONFINED_TO: &str = "bitvelocity.confined-to";

/// Whether `path` lies under the folder `root` (no trailing `/`): it starts with `root/`,
/// and no segment after that is empty, `.` or `..`, plainly or percent-encoded, nor hides a
/// `/` or `\\` in an escape.
pub fn lies_within(root: &str, path: &str) -> bool {
    let Some(rest) = path.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    !rest.is_empty()
        && !rest.contains('\\')
        && !rest.contains('\0')
        && rest.split('/').all(|segment| {
            let decoded = percent_decoded(segment);
            !segment.is_empty()
                && decoded != "."
                && decoded != ".."
                && !decoded.contains('/')
                && !decoded.contains('\\')
        })
}

/// `segment` with its `%XX` escapes decoded (bytes that are not UTF-8 shown as U+FFFD).
fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `FileIO` like `file_io` that refuses every file outside the folder `root`.
pub fn confined_file_io(file_io: &iceberg::io::FileIO, root: &str) -> iceberg::io::FileIO {
    iceberg::io::FileIOBuilder::new(Arc::new(ObjectStorageFactory))
        .with_props(file_io.config().props().clone())
        .with_prop(CONFINED_TO, root.trim_end_matches('/'))
        .build()
}

/// Refuses `location` outside `root`; on local disk also when a symbolic link on its way
/// leads outside.
fn confine(root: &str, location: &str) -> iceberg::Result<()> {
    let outside = || {
        iceberg::Error::new(
            iceberg::ErrorKind::DataInvalid,
            format!("{location} lies outside the table's location {root}"),
        )
    };
    if !lies_within(root, location) {
        return Err(outside());
    }
    if let (Ok(Location::Local(path)), Ok(Location::Local(folder))) =
        (Location::parse(location), Location::parse(root))
    {
        let folder = folder.canonicalize().map_err(|_| outside())?;
        let mut existing = path.as_path();
        while !existing.exists() {
            existing = existing.parent().ok_or_else(outside)?;
        }
        let real = existing.canonicalize().map_err(|_| outside())?;
        if !real.starts_with(&folder) {
            return Err(outside());
        }
    }
    Ok(())
}

/// One file found by [`ObjectStorage::list`].
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// Full location, in the same scheme as the listed prefix (`file:///…` or `s3://…`).
    pub location: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// iceberg `Storage` over `object_store`: local files (fsynced) and S3.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct ObjectStorage {
    props: HashMap<String, String>,
    #[serde(skip)]
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials stay out of logs.
        let keys: Vec<&String> = self.props.keys().collect();
        f.debug_struct("ObjectStorage")
            .field("props", &keys)
            .finish()
    }
}

/// Which backend a resolved location uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Local,
    S3,
}

/// A location resolved to its store and the key inside it.
struct Resolved {
    store: Arc<dyn ObjectStore>,
    key: ObjPath,
    backend: Backend,
    /// `file://` or `s3://bucket/`: what to put before a key to get a location back.
    base: String,
}

impl ObjectStorage {
    /// A storage configured by iceberg properties (`s3.*`); local paths need none.
    pub fn new(props: HashMap<String, String>) -> Self {
        Self {
            props,
            stores: Arc::default(),
        }
    }

    /// The storage a table's `FileIO` uses, rebuilt from its configuration (for listing).
    pub fn from_config(config: &StorageConfig) -> Self {
        Self::new(config.props().clone())
    }

    fn resolve(&self, location: &str) -> iceberg::Result<Resolved> {
        if let Some(root) = self.props.get(CONFINED_TO) {
            confine(root, location)?;
        }
        let parsed = Location::parse(location).map_err(|e| {
            iceberg::Error::new(iceberg::ErrorKind::FeatureUnsupported, e.to_string())
        })?;
        let invalid = |e: object_store::path::Error| {
            iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                format!("invalid object location {location}"),
            )
            .with_source(e)
        };
        match parsed {
            Location::Local(path) => {
                if !path.is_absolute() {
                    return Err(iceberg::Error::new(
                        iceberg::ErrorKind::DataInvalid,
                        format!("relative file location {location}"),
                    ));
                }
                let store = self.store("file", || Ok(Arc::new(LocalFileSystem::new())))?;
                let text = path.to_string_lossy();
                let key = ObjPath::parse(text.trim_start_matches('/')).map_err(invalid)?;
                Ok(Resolved {
                    store,
                    key,
                    backend: Backend::Local,
                    base: "file:///".to_string(),
                })
            }
            Location::S3 { bucket, prefix } => {
                let props = self.props.clone();
                let b = bucket.clone();
                let store = self.store(&format!("s3://{bucket}"), move || {
                    Ok(Arc::new(s3_store(&b, &props)?))
                })?;
                let key = ObjPath::parse(&prefix).map_err(invalid)?;
                Ok(Resolved {
                    store,
                    key,
                    backend: Backend::S3,
                    base: format!("s3://{bucket}/"),
                })
            }
        }
    }

    fn store(
        &self,
        name: &str,
        build: impl FnOnce() -> iceberg::Result<Arc<dyn ObjectStore>>,
    ) -> iceberg::Result<Arc<dyn ObjectStore>> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.get(name) {
            return Ok(s.clone());
        }
        let s = build()?;
        stores.insert(name.to_string(), s.clone());
        Ok(s)
    }

    /// Every file under `prefix` (a folder location), recursively.
    pub async fn list(&self, prefix: &str) -> iceberg::Result<Vec<StoredFile>> {
        let r = self.resolve(prefix)?;
        let key = r.key.clone();
        let listed: Vec<object_store::ObjectMeta> = r
            .store
            .list(Some(&key))
            .try_collect()
            .await
            .map_err(|e| os_error(prefix, e))?;
        Ok(listed
            .into_iter()
            .map(|m| StoredFile {
                location: format!("{}{}", r.base, m.location),
                size: m.size,
                modified: m.last_modified.into(),
            })
            .collect())
    }
}

/// Builds the S3 store of `bucket` from iceberg's `s3.*` properties over the AWS environment.
fn s3_store(
    bucket: &str,
    props: &HashMap<String, String>,
) -> iceberg::Result<object_store::aws::AmazonS3> {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(v) = props.get(S3_ENDPOINT) {
        b = b.with_endpoint(v).with_allow_http(v.starts_with("http://"));
    } else if let Ok(v) = std::env::var("AWS_ENDPOINT_URL") {
        b = b.with_allow_http(v.starts_with("http://"));
    }
    if let Some(v) = props.get(S3_ACCESS_KEY_ID) {
        b = b.with_access_key_id(v);
    }
    if let Some(v) = props.get(S3_SECRET_ACCESS_KEY) {
        b = b.with_secret_access_key(v);
    }
    if let Some(v) = props.get(S3_SESSION_TOKEN) {
        b = b.with_token(v);
    }
    if let Some(v) = props.get(S3_REGION) {
        b = b.with_region(v);
    }
    let path_style = props
        .get(S3_PATH_STYLE_ACCESS)
        .map(|v| v != "false")
        .unwrap_or(true);
    b = b.with_virtual_hosted_style_request(!path_style);
    b.build().map_err(|e| {
        iceberg::Error::new(
            iceberg::ErrorKind::Unexpected,
            format!("configuring S3 for bucket {bucket}"),
        )
        .with_source(e)
    })
}

fn os_error(location: &str, e: object_store::Error) -> iceberg::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => iceberg::ErrorKind::DataInvalid,
        _ => iceberg::ErrorKind::Unexpected,
    };
    let retryable = !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::NotSupported { .. }
    );
    let err = iceberg::Error::new(kind, format!("object storage: {location}")).with_source(e);
    if retryable {
        err.with_retryable(true)
    } else {
        err
    }
}

/// The deepest folder on the way to local file `key` that exists now: after the write,
/// every folder from the file's own down to this one holds a new entry to make durable.
fn existing_ancestor(key: &ObjPath) -> PathBuf {
    let path = PathBuf::from(format!("/{key}"));
    let mut at = path.parent();
    while let Some(dir) = at {
        if dir.exists() {
            return dir.to_path_buf();
        }
        at = dir.parent();
    }
    PathBuf::from("/")
}

/// Makes a local file durable, with its new directory entries: the file, its folder, and
/// each folder the write created up to (and including) `existed`, the deepest one that
/// existed before.
async fn sync_local(key: &ObjPath, existed: PathBuf) -> iceberg::Result<()> {
    let path = PathBuf::from(format!("/{key}"));
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::File::open(&path)?.sync_all()?;
        let mut dir = path.parent();
        while let Some(d) = dir {
            std::fs::File::open(d)?.sync_all()?;
            if d == existed || !d.starts_with(&existed) {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    })
    .await
    .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::Unexpected, format!("fsync task: {e}")))?
    .map_err(|e| {
        iceberg::Error::new(iceberg::ErrorKind::Unexpected, format!("fsync /{key}")).with_source(e)
    })
}

#[async_trait]
#[typetag::serde]
impl Storage for ObjectStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let r = self.resolve(path)?;
        match r.store.head(&r.key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(os_error(path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let r = self.resolve(path)?;
        let m = r.store.head(&r.key).await.map_err(|e| os_error(path, e))?;
        Ok(FileMetadata { size: m.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let r = self.resolve(path)?;
        let got = r.store.get(&r.key).await.map_err(|e| os_error(path, e))?;
        got.bytes().await.map_err(|e| os_error(path, e))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        let r = self.resolve(path)?;
        Ok(Box::new(ObjectRead {
            store: r.store,
            key: r.key,
            location: path.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        let r = self.resolve(path)?;
        let existed = (r.backend == Backend::Local).then(|| existing_ancestor(&r.key));
        r.store
            .put(&r.key, PutPayload::from_bytes(bs))
            .await
            .map_err(|e| os_error(path, e))?;
        if let Some(existed) = existed {
            sync_local(&r.key, existed).await?;
        }
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let r = self.resolve(path)?;
        Ok(Box::new(ObjectWrite {
            inner: Some(BufWriter::new(r.store.clone(), r.key.clone())),
            existed: (r.backend == Backend::Local).then(|| existing_ancestor(&r.key)),
            key: r.key,
            location: path.to_string(),
        }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        let r = self.resolve(path)?;
        // Deleting is idempotent, but object_store sends S3's delete as a POST and does not
        // retry it when a pooled connection turns out reset: retry here.
        let mut retry = crate::Retry::transient_io();
        loop {
            match r.store.delete(&r.key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => return Ok(()),
                Err(e) => {
                    let e = os_error(path, e);
                    if !e.retryable() || !retry.pause().await {
                        return Err(e);
                    }
                    tracing::debug!(path, error = %e, "delete failed in transport; retrying");
                }
            }
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        for f in self.list(path).await? {
            self.delete(&f.location).await?;
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(p) = paths.next().await {
            self.delete(&p).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Ranged reads of one object.
struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    key: ObjPath,
    location: String,
}

#[async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store
            .get_range(&self.key, range)
            .await
            .map_err(|e| os_error(&self.location, e))
    }
}

/// A streamed write: one PUT for a small file, a multipart upload for a large one; the
/// object appears (whole) only at `close`.
struct ObjectWrite {
    inner: Option<BufWriter>,
    key: ObjPath,
    /// Local files: the deepest folder that existed before the write (see `sync_local`).
    existed: Option<PathBuf>,
    location: String,
}

impl Drop for ObjectWrite {
    /// A writer dropped without `close` (its commit failed or was abandoned) aborts its
    /// upload, so no S3 multipart upload or local staging file is left behind.
    fn drop(&mut self) {
        if let Some(mut w) = self.inner.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = w.abort().await;
            });
        }
    }
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        let w = self.inner.as_mut().ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("{}: write after close", self.location),
            )
        })?;
        w.put(bs).await.map_err(|e| os_error(&self.location, e))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        let mut w = self.inner.take().ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("{}: closed twice", self.location),
            )
        })?;
        w.shutdown().await.map_err(|e| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("object storage: {}", self.location),
            )
            .with_source(e)
            .with_retryable(true)
        })?;
        if let Some(existed) = self.existed.take() {
            sync_local(&self.key, existed).await?;
        }
        Ok(())
    }
}

/// Builds [`ObjectStorage`] for every `FileIO` of a catalog.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectStorageFactory;

#[typetag::serde]
impl StorageFactory for ObjectStorageFactory {
    fn build(&self, config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(ObjectStorage::from_config(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations_and_refuses_unknown_schemes() {
        assert_eq!(
            Location::parse("s3://b/x/y/").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "x/y".into()
            }
        );
        assert_eq!(
            Location::parse("s3://b").unwrap().url(),
            "s3://b".to_string()
        );
        assert_eq!(
            Location::parse("file:///tmp/w").unwrap(),
            Location::Local("/tmp/w".into())
        );
        assert_eq!(
            Location::parse("rel/dir").unwrap(),
            Location::Local("rel/dir".into())
        );
        for bad in [
            "gs://b/x",
            "hdfs://nn/x",
            "s3:",
            "s3:foo",
            "file://rel",
            "s3:///x",
            "",
        ] {
            let e = Location::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn local_files_round_trip_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let root = format!("file://{}", dir.path().display());
        let s = ObjectStorage::new(HashMap::new());
        let a = format!("{root}/t/data/a.parquet");
        s.write(&a, Bytes::from_static(b"hello")).await.unwrap();
        let mut w = s
            .writer(&format!("{root}/t/metadata/m.json"))
            .await
            .unwrap();
        w.write(Bytes::from_static(b"{")).await.unwrap();
        w.write(Bytes::from_static(b"}")).await.unwrap();
        w.close().await.unwrap();
        assert!(s.exists(&a).await.unwrap());
        assert_eq!(s.metadata(&a).await.unwrap().size, 5);
        let r = s.reader(&a).await.unwrap();
        assert_eq!(&r.read(1..4).await.unwrap()[..], b"ell");
        let mut listed: Vec<String> = s
            .list(&format!("{root}/t"))
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.location)
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            vec![a.clone(), format!("{root}/t/metadata/m.json")],
            "listing returns locations in the scheme they were written with"
        );
        s.delete(&a).await.unwrap();
        s.delete(&a).await.unwrap(); // deleting a missing file is not an error
        assert!(!s.exists(&a).await.unwrap());
        assert!(dir.path().join("t/metadata/m.json").exists());
    }
}
