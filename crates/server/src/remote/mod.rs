//! Instances on other hosts: `accellm worker` processes driven by an `accellm serve --workers`
//! front over TCP (see `docs/distributed.md`).
//!
//! - [`wire`]: the frames and messages (length-delimited; JSON control, raw `f32` KV);
//! - [`worker`]: the worker process (one engine instance, its KV pool, links to peers);
//! - [`tls`]: mutual TLS with a cluster CA on every link (plaintext only on loopback or
//!   `--insecure`);
//! - `front`: the front's proxies that make a remote worker look like a local instance to the
//!   scheduler thread.
//!
//! Plain blocking `std::net` sockets and threads, like the in-process workers and links they
//! stand in for: the protocol is one request and one answer per iteration plus streamed KV, which
//! needs neither an async runtime on the worker nor an RPC framework (tonic would add protobuf
//! code generation and an HTTP/2 stack to the build for a dozen message types).

pub(crate) mod front;
pub mod tls;
pub mod wire;
pub mod worker;

pub use worker::{run as run_worker, WorkerArgs};
