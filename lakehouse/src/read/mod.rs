//! Reading: the parallel scan of a table (deletes applied), SQL over the catalog (time travel,
//! consistent reads), and the metadata-only views of tables and snapshots.

mod confined;
pub mod inspect;
pub mod query;
pub mod scan;
