//! Table files: reading and writing data files by field id, position-delete files, and
//! silver's primary-key index over them.

pub mod deletes;
pub mod files;
pub mod pk_index;
pub mod spawned;
