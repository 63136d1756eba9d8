//! Operator access: the admin gRPC API behind the admin credential, the
//! credential itself, and the HTTP endpoint for metrics and health.

mod credential;
mod http;
mod mesh;
mod service;

pub use credential::{AdminFiles, write_admin_credential};
pub use http::serve_http;
pub use service::AdminService;
