//! The proxy's TLS configurations, rebuilt from each new SVID and bundle.
//! A rotation swaps the configurations used for new connections; a
//! connection already open keeps the certificate it was made with, so no
//! connection is dropped. Servers require a client SVID of the trust
//! domain; clients require the server to be one of the SPIFFE IDs the
//! cluster names (any SVID of the trust domain if it names none).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use rampart_certs::tls::{ClientAuth, CurrentSvid, PeerPolicy, client_config, server_config};
use rampart_certs::{SpiffeId, TrustBundle};
use rustls::{ClientConfig, ServerConfig};
use tokio::sync::watch;

use crate::identity::Identity;

pub const H2: &[u8] = b"h2";
pub const HTTP1: &[u8] = b"http/1.1";

/// Shared by every listener and cluster.
pub struct Tls {
    state: RwLock<Arc<State>>,
}

/// What a client offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// Nothing: a TCP connection.
    None,
    /// `h2` and `http/1.1`: the peer picks.
    Http,
    /// `http/1.1` only: for HTTP/1.1 upgrades (WebSocket).
    Http1,
}

/// A client config's accepted server IDs and ALPN offer.
type ClientKey = (Vec<String>, Alpn);

struct State {
    own_id: Arc<str>,
    svid: Arc<CurrentSvid>,
    bundle: TrustBundle,
    server: Arc<ServerConfig>,
    clients: Mutex<HashMap<ClientKey, Arc<ClientConfig>>>,
}

impl State {
    fn new(identity: &Identity) -> anyhow::Result<State> {
        let svid = CurrentSvid::new(&identity.svid)?;
        let trust_domain = identity.bundle.trust_domain().clone();
        let mut server = server_config(
            svid.clone(),
            &identity.bundle,
            ClientAuth::Required(PeerPolicy::TrustDomain(trust_domain)),
        )?;
        server.alpn_protocols = vec![H2.to_vec(), HTTP1.to_vec()];
        Ok(State {
            own_id: identity.svid.spiffe_id().to_string().into(),
            svid,
            bundle: identity.bundle.clone(),
            server: Arc::new(server),
            clients: Mutex::new(HashMap::new()),
        })
    }
}

impl Tls {
    pub fn new(identity: &Identity) -> anyhow::Result<Arc<Tls>> {
        Ok(Arc::new(Tls {
            state: RwLock::new(Arc::new(State::new(identity)?)),
        }))
    }

    /// Follows `identities`, swapping configurations on every change.
    pub async fn follow(self: Arc<Self>, mut identities: watch::Receiver<Arc<Identity>>) {
        while identities.changed().await.is_ok() {
            let identity = identities.borrow_and_update().clone();
            match State::new(&identity) {
                Ok(state) => *self.state.write().expect("TLS state lock") = Arc::new(state),
                Err(e) => {
                    tracing::error!(error = %e, "cannot use the renewed SVID; keeping the previous one")
                }
            }
        }
    }

    fn current(&self) -> Arc<State> {
        self.state.read().expect("TLS state lock").clone()
    }

    /// This workload's SPIFFE ID.
    pub fn own_id(&self) -> Arc<str> {
        self.current().own_id.clone()
    }

    pub fn server(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    /// A client config accepting `expected` servers (any SVID of the trust
    /// domain if empty), offering `alpn`.
    pub fn client(&self, expected: &[String], alpn: Alpn) -> anyhow::Result<Arc<ClientConfig>> {
        let state = self.current();
        let key = (expected.to_vec(), alpn);
        if let Some(c) = state.clients.lock().expect("client cache lock").get(&key) {
            return Ok(c.clone());
        }
        let policy = if expected.is_empty() {
            PeerPolicy::TrustDomain(state.bundle.trust_domain().clone())
        } else {
            PeerPolicy::OneOf(
                expected
                    .iter()
                    .map(|id| SpiffeId::parse(id))
                    .collect::<Result<_, _>>()?,
            )
        };
        let mut config = client_config(Some(state.svid.clone()), &state.bundle, policy)?;
        config.alpn_protocols = match alpn {
            Alpn::None => Vec::new(),
            Alpn::Http => vec![H2.to_vec(), HTTP1.to_vec()],
            Alpn::Http1 => vec![HTTP1.to_vec()],
        };
        let config = Arc::new(config);
        state
            .clients
            .lock()
            .expect("client cache lock")
            .insert(key, config.clone());
        Ok(config)
    }
}
