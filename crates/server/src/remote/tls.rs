//! Mutual TLS on the links between the front and its workers and between workers.
//!
//! Every process of a cluster holds a certificate signed by one cluster CA and trusts only that
//! CA: a worker asks every connecting peer (front or worker) for its certificate and drops the
//! connection during the TLS handshake, before reading a single frame, unless the CA signed it;
//! fronts and workers check a worker's certificate the same way when they connect to it.
//! Membership is the CA's signature: host names are not checked, since workers are reached by
//! addresses that change when a pod restarts (so the CA must sign nothing but this cluster's
//! processes). TLS 1.3 only, AES-GCM only (hardware AES on x86-64 and aarch64), `ring` as the
//! crypto provider, no session resumption.
//!
//! One TLS session per link. [`Link`] splits it into a reader and a writer for two threads, as
//! `TcpStream::try_clone` does for plain sockets: the session state sits behind a mutex held
//! only while records are encrypted or decrypted, never across a blocking socket call, so a
//! writer stalled on a full send buffer never stops the reader from draining the socket.
//!
//! Without TLS a link is the plain socket; [`check_plaintext_listen`] keeps that to loopback
//! unless the operator says `--insecure`. A KV link between two workers of one host may also be
//! a Unix socket ([`unix`]), never encrypted: only processes of the worker's user can reach it
//! (see `super::worker`).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    ClientConfig, ClientConnection, Connection, DigitallySignedStruct, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme,
};
use serde::{Deserialize, Serialize};

/// How long a peer may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most plaintext encrypted per lock of the session (then written to the socket unlocked).
const WRITE_CHUNK: usize = 256 << 10;

/// `--tls-cert`, `--tls-key`, `--tls-ca`: the flags of `accellm serve` and `accellm worker`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate of this process (then any intermediates), signed by the cluster CA; used
    /// both as a server (worker) and as a client (front, worker to worker), so it needs the
    /// serverAuth and clientAuth key usages. Turns on mutual TLS on every link.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate(s) of the cluster CA: the only issuer whose certificates are accepted.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The files named, when all three are (a partial set is an error).
    pub fn files(&self) -> Result<Option<TlsFiles>, TlsError> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            _ => Err(TlsError::Incomplete),
        }
    }
}

/// A process's certificate, key and the cluster CA, as PEM files (`[tls]` in a config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// This process's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The cluster CA.
    pub ca: PathBuf,
}

/// Errors loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only some of `--tls-cert`, `--tls-key`, `--tls-ca` were given.
    #[error("--tls-cert, --tls-key and --tls-ca go together: give all three or none")]
    Incomplete,
    /// A PEM file could not be read or parsed.
    #[error("{what} {path}: {reason}")]
    Pem {
        /// Which file this is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the material (a key that does not match the certificate, say).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA could not be made into a verifier.
    #[error("cluster CA: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// A process's TLS identity and trust, ready for links in both directions.
pub struct Tls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

/// TLS 1.3 with AES-GCM only, on `ring`.
///
/// rustls deprecates `ring`'s provider for lacking post-quantum key exchange (which only
/// `aws-lc-rs` offers, at the price of a CMake-built C library in every build); the key
/// exchange here is X25519 or P-256/P-384.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
            ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ],
        ..ring::default_provider()
    })
}

fn pem_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(pem_error(what, path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

impl Tls {
    /// Loads `files` and builds the server and client sides.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let chain = certs("certificate", &files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| pem_error("private key", &files.key, e))?;
        let mut roots = RootCertStore::empty();
        for ca in certs("CA certificate", &files.ca)? {
            roots
                .add(ca)
                .map_err(|e| pem_error("CA certificate", &files.ca, e))?;
        }
        Self::new(chain, key, roots)
    }

    /// Builds both sides from DER material: `chain` (leaf first) and its `key`, trusting `roots`.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: RootCertStore,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        // No tickets: nothing resumes, and nothing arrives after the handshake but data.
        server.send_tls13_tickets = 0;
        let verifier = ClusterVerifier {
            roots: roots.clone(),
            inner: WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?,
            provider: provider.clone(),
        };
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(chain, key)?;
        client.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// A TLS server configuration for the front's HTTP API (`--ssl-certfile`, `--ssl-keyfile`):
/// the server's certificate chain and key, no client certificates, TLS 1.3 with AES-GCM as on
/// the worker links, ALPN `http/1.1`.
pub fn https_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs("--ssl-certfile", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error("--ssl-keyfile", key, e))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts a worker's certificate when the cluster CA signed it for server use; its names are
/// not checked (see the module doc).
#[derive(Debug)]
struct ClusterVerifier {
    roots: Arc<RootCertStore>,
    inner: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ClusterVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether every address `addr` (`host:port`) resolves to is a loopback address.
pub fn is_loopback(addr: &str) -> bool {
    addr.to_socket_addrs()
        .map(|a| {
            let a: Vec<_> = a.collect();
            !a.is_empty() && a.iter().all(|s| s.ip().is_loopback())
        })
        .unwrap_or(false)
}

/// Refuses plaintext on a listening address other than loopback unless `insecure` (which is
/// then logged loudly): without TLS anyone who reaches the port can drive the worker and read
/// or write its KV.
pub fn check_plaintext_listen(addr: &str, insecure: bool) -> anyhow::Result<()> {
    if is_loopback(addr) {
        return Ok(());
    }
    if !insecure {
        anyhow::bail!(
            "refusing to listen on {addr} without TLS: anyone who reaches this port could run \
             batches, read generated text and overwrite KV. Give --tls-cert, --tls-key and \
             --tls-ca (docs/distributed.md, \"Security\"), listen on a loopback address, or pass \
             --insecure on a network you trust"
        );
    }
    tracing::warn!(
        %addr,
        "INSECURE: no TLS on a non-loopback address (--insecure): any peer that \
         reaches this port can drive this worker, read prompts and generated text, and write KV"
    );
    eprintln!(
        "accellm worker: WARNING: --insecure: {addr} accepts unauthenticated, unencrypted peers"
    );
    Ok(())
}

/// One connection between two processes of the cluster, TLS or plain, before it is split.
pub struct Link {
    reader: LinkReader,
    writer: LinkWriter,
    socket: TcpStream,
}

impl Link {
    /// Whether the link is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.writer, LinkWriter::Tls { .. })
    }

    /// The underlying socket (for timeouts and shutdown; never read or write it directly).
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// The reader and the writer, borrowed (for a handshake before the link is split).
    pub fn parts(&mut self) -> (&mut LinkReader, &mut LinkWriter) {
        (&mut self.reader, &mut self.writer)
    }

    /// The reader and the writer, usable from two threads.
    pub fn split(self) -> (LinkReader, LinkWriter) {
        (self.reader, self.writer)
    }
}

/// Shakes hands as the accepting side (a worker). With `tls`, a peer that presents no
/// certificate signed by the cluster CA fails here: nothing it sends is ever read as a frame.
pub fn accept(socket: TcpStream, tls: Option<&Tls>) -> io::Result<Link> {
    match tls {
        None => plain(socket),
        Some(t) => {
            let conn = ServerConnection::new(t.server.clone()).map_err(io::Error::other)?;
            handshake(socket, conn.into())
        }
    }
}

/// Shakes hands as the connecting side (the front, or a worker opening a KV link) with the
/// worker at `addr`. With `tls`, a worker whose certificate the cluster CA did not sign fails
/// here, before anything is sent to it.
pub fn connect(socket: TcpStream, tls: Option<&Tls>, addr: &str) -> io::Result<Link> {
    match tls {
        None => plain(socket),
        Some(t) => {
            // The name is not checked (see the module doc) but rustls wants one.
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_string())
                .unwrap_or_else(|_| ServerName::try_from("accellm-worker").expect("valid name"));
            let conn = ClientConnection::new(t.client.clone(), name).map_err(io::Error::other)?;
            handshake(socket, conn.into())
        }
    }
}

/// A KV link over a Unix socket, split into its reader and writer (no TLS: see the module doc).
pub fn unix(socket: &UnixStream) -> io::Result<(LinkReader, LinkWriter)> {
    Ok((
        LinkReader::Unix(socket.try_clone()?),
        LinkWriter::Unix(socket.try_clone()?),
    ))
}

fn plain(socket: TcpStream) -> io::Result<Link> {
    Ok(Link {
        reader: LinkReader::Plain(socket.try_clone()?),
        writer: LinkWriter::Plain(socket.try_clone()?),
        socket,
    })
}

fn handshake(mut socket: TcpStream, mut conn: Connection) -> io::Result<Link> {
    let before = (socket.read_timeout()?, socket.write_timeout()?);
    // A peer that connects and says nothing must not hold a thread for long.
    let bounded =
        |t: Option<Duration>| Some(t.map_or(HANDSHAKE_TIMEOUT, |t| t.min(HANDSHAKE_TIMEOUT)));
    socket.set_read_timeout(bounded(before.0))?;
    socket.set_write_timeout(bounded(before.1))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut socket)?;
    }
    // Send what the handshake left (the client's Finished) before data follows.
    while conn.wants_write() {
        conn.write_tls(&mut socket)?;
    }
    socket.set_read_timeout(before.0)?;
    socket.set_write_timeout(before.1)?;
    // KV layers are megabytes: the writer bounds each encryption pass itself.
    conn.set_buffer_limit(None);
    let state = Arc::new(Mutex::new(conn));
    Ok(Link {
        reader: LinkReader::Tls(Box::new(TlsReader {
            state: state.clone(),
            socket: socket.try_clone()?,
            buf: vec![0; 64 << 10].into_boxed_slice(),
            start: 0,
            end: 0,
        })),
        writer: LinkWriter::Tls {
            state,
            socket: socket.try_clone()?,
            out: Vec::new(),
        },
        socket,
    })
}

fn lock(state: &Mutex<Connection>) -> io::Result<MutexGuard<'_, Connection>> {
    state
        .lock()
        .map_err(|_| io::Error::other("TLS session poisoned"))
}

/// The reading half of a [`Link`].
pub enum LinkReader {
    /// Plain socket.
    Plain(TcpStream),
    /// Unix socket (same host).
    Unix(UnixStream),
    /// TLS session.
    Tls(Box<TlsReader>),
}

/// Reads TLS records off the socket (unlocked) and decrypts them (locked).
pub struct TlsReader {
    state: Arc<Mutex<Connection>>,
    socket: TcpStream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Read for LinkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(out),
            Self::Unix(s) => s.read(out),
            Self::Tls(t) => t.read(out),
        }
    }
}

impl TlsReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            {
                let mut c = lock(&self.state)?;
                match c.reader().read(out) {
                    // 0: the peer closed the session.
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.start < self.end {
                    let n = c.read_tls(&mut &self.buf[self.start..self.end])?;
                    if n == 0 {
                        return Err(io::Error::other("TLS session accepts no more input"));
                    }
                    self.start += n;
                    c.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    continue;
                }
            }
            let n = self.socket.read(&mut self.buf)?;
            if n == 0 {
                // The transport ended: rustls tells a clean close from a cut one.
                let mut c = lock(&self.state)?;
                c.read_tls(&mut &[][..])?;
                return match c.reader().read(out) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    r => r,
                };
            }
            (self.start, self.end) = (0, n);
        }
    }
}

/// The writing half of a [`Link`].
pub enum LinkWriter {
    /// Plain socket.
    Plain(TcpStream),
    /// Unix socket (same host).
    Unix(UnixStream),
    /// TLS session: records are encrypted into `out` under the lock and written unlocked.
    Tls {
        /// The session, shared with the reader.
        state: Arc<Mutex<Connection>>,
        /// The socket.
        socket: TcpStream,
        /// Encrypted records waiting to be written.
        out: Vec<u8>,
    },
}

impl Write for LinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
            Self::Tls { state, socket, out } => {
                let buf = &buf[..buf.len().min(WRITE_CHUNK)];
                out.clear();
                let n = {
                    let mut c = lock(state)?;
                    let n = c.writer().write(buf)?;
                    while c.wants_write() {
                        c.write_tls(out)?;
                    }
                    n
                };
                socket.write_all(out)?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Unix(s) => s.flush(),
            Self::Tls { socket, .. } => socket.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose,
    };

    static NEXT_CA: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    /// A CA that signs leaf certificates for both ends of a link.
    struct Ca(CertifiedIssuer<'static, KeyPair>);

    impl Ca {
        fn new() -> Self {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            // Distinct names: another CA's certificates fail as from an unknown issuer.
            let n = NEXT_CA.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            p.distinguished_name
                .push(rcgen::DnType::CommonName, format!("test CA {n}"));
            let key = KeyPair::generate().expect("CA key");
            Self(CertifiedIssuer::self_signed(p, key).expect("CA certificate"))
        }

        fn roots(&self) -> RootCertStore {
            let mut r = RootCertStore::empty();
            r.add(self.0.der().clone()).expect("CA certificate parses");
            r
        }

        /// A process's identity signed by this CA, trusting `trust`.
        fn identity(&self, trust: &Ca) -> Tls {
            let mut p = CertificateParams::new(vec!["worker-0".to_string()]).expect("params");
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().expect("key");
            let cert = p.signed_by(&key, &self.0).expect("signed");
            let key = PrivateKeyDer::try_from(key.serialize_der()).expect("key DER");
            Tls::new(vec![cert.der().clone()], key, trust.roots()).expect("TLS config")
        }
    }

    /// Accepts one connection with `server` in a thread; returns the address and the outcome
    /// (the frame bytes it read after the handshake, echoed back).
    fn serve_once(server: Option<Tls>) -> (String, std::thread::JoinHandle<io::Result<Vec<u8>>>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept()?;
            let (mut r, mut w) = accept(s, server.as_ref())?.split();
            let mut len = [0u8; 4];
            r.read_exact(&mut len)?;
            let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
            r.read_exact(&mut body)?;
            w.write_all(&len)?;
            w.write_all(&body)?;
            Ok(body)
        });
        (addr, h)
    }

    fn call(addr: &str, client: Option<&Tls>, body: &[u8]) -> io::Result<Vec<u8>> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let (mut r, mut w) = connect(s, client, addr)?.split();
        w.write_all(&(body.len() as u32).to_le_bytes())?;
        w.write_all(body)?;
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let mut back = vec![0u8; u32::from_le_bytes(len) as usize];
        r.read_exact(&mut back)?;
        Ok(back)
    }

    #[test]
    fn a_cluster_certificate_gets_through_and_large_frames_round_trip() {
        let ca = Ca::new();
        let (addr, server) = serve_once(Some(ca.identity(&ca)));
        // Larger than a TLS record and than one write chunk.
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let back = call(&addr, Some(&ca.identity(&ca)), &body).expect("echo over TLS");
        assert_eq!(back, body);
        assert_eq!(server.join().expect("server thread").expect("served"), body);
    }

    #[test]
    fn a_client_from_another_ca_or_without_tls_gets_nothing() {
        let ca = Ca::new();
        let other = Ca::new();
        // Signed by another CA (and trusting ours, so only the server's check can stop it).
        let (addr, server) = serve_once(Some(ca.identity(&ca)));
        assert!(call(&addr, Some(&other.identity(&ca)), b"hello").is_err());
        let refused = server.join().expect("server thread");
        assert!(refused.is_err(), "the server read {refused:?}");
        // Plaintext to a TLS worker.
        let (addr, server) = serve_once(Some(ca.identity(&ca)));
        assert!(call(&addr, None, b"hello").is_err());
        assert!(server.join().expect("server thread").is_err());
    }

    #[test]
    fn a_server_from_another_ca_gets_nothing() {
        let ca = Ca::new();
        let other = Ca::new();
        let (addr, server) = serve_once(Some(other.identity(&ca)));
        let err = call(&addr, Some(&ca.identity(&ca)), b"secret prompt").expect_err("refused");
        assert!(err.to_string().contains("certificate"), "{err}");
        assert!(server.join().expect("server thread").is_err());
    }

    #[test]
    fn a_client_without_a_certificate_gets_nothing() {
        let ca = Ca::new();
        let (addr, server) = serve_once(Some(ca.identity(&ca)));
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(ca.roots())
            .with_no_client_auth();
        let s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let name = ServerName::try_from("worker-0").expect("name");
        let conn = ClientConnection::new(Arc::new(client), name).expect("client");
        // The client side may finish its half of the handshake; the server then refuses.
        let outcome = handshake(s, conn.into()).and_then(|l| {
            let (mut r, mut w) = l.split();
            w.write_all(&5u32.to_le_bytes())?;
            w.write_all(b"hello")?;
            let mut b = [0u8; 4];
            r.read_exact(&mut b)
        });
        assert!(outcome.is_err());
        assert!(server.join().expect("server thread").is_err());
    }

    #[test]
    fn plain_links_stay_plain() {
        let (addr, server) = serve_once(None);
        assert_eq!(call(&addr, None, b"abc").expect("plain echo"), b"abc");
        assert_eq!(
            server.join().expect("server thread").expect("served"),
            b"abc"
        );
    }

    #[test]
    fn plaintext_is_refused_off_loopback_unless_insecure() {
        assert!(is_loopback("127.0.0.1:7001"));
        assert!(is_loopback("[::1]:7001"));
        assert!(is_loopback("localhost:7001"));
        assert!(!is_loopback("0.0.0.0:7001"));
        assert!(!is_loopback("10.0.0.1:7001"));
        assert!(check_plaintext_listen("127.0.0.1:0", false).is_ok());
        let e = check_plaintext_listen("0.0.0.0:7001", false).expect_err("refused");
        assert!(e.to_string().contains("--insecure"), "{e}");
        assert!(check_plaintext_listen("0.0.0.0:7001", true).is_ok());
    }

    #[test]
    fn a_partial_set_of_flags_is_an_error() {
        let args = TlsArgs {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(matches!(args.files(), Err(TlsError::Incomplete)));
        assert!(TlsArgs::default().files().expect("none").is_none());
    }
}
