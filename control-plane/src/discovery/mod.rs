//! Where endpoints come from besides the mesh model: sidecars that register
//! themselves when they connect (standalone), and later Kubernetes watchers.

pub mod registered;

pub use registered::Registrations;
