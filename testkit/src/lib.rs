//! The local AWS that calsync's tests need, and nothing else: moto's server, the tables and
//! secrets `template.yaml` declares, moto's stream records in Lambda's event shape, functions under
//! the Runtime Interface Emulator, API Gateway v2 events, and calsync's lifecycle events read from
//! moto's EventBridge. `shared`'s and the functions' tests
//! use it through [`TestStack`]; `xtask` builds the long-running local stack from the same modules.
//!
//! `template.yaml` is the one description of the stack: [`template`] reads it and every other
//! module works from what it declares.

pub mod api_gateway;
pub mod aws;
pub mod ddb_json;
pub mod emulator_control;
pub mod eventbridge;
pub mod fault_proxy;
pub mod invocation;
pub mod moto;
pub mod paths;
pub mod process;
pub mod queues;
pub mod rie;
pub mod rows;
pub mod seed;
pub mod stack;
pub mod streams;
pub mod tables;
pub mod template;

pub use stack::TestStack;
