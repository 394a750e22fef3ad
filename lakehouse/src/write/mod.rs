//! Writing: the bronze change log, the silver current state, and the medallion sink that keeps
//! them in step.

pub mod bronze;
pub mod medallion;
pub mod silver;
