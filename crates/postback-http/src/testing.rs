//! A real HTTP/1.1 partner for tests and examples (feature `test-support`): std threads,
//! listening on 127.0.0.1 (a port the system picks), plain or over TLS (with the `tls` feature),
//! one thread per connection, keep-alive, answering from a script and recording every request
//! exactly as it arrived, and counting every connection accepted.
//!
//! Everything is bounded so a test cannot hang: at most [`MAX_CONNECTIONS`] connections at once,
//! heads up to 64 KiB and bodies up to 1 MiB, idle connections closed after 30 s, and on shut
//! down or drop every stall is cut short and every thread stopped and joined.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

#[cfg(feature = "tls")]
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Connections served at once; more are closed on arrival.
pub const MAX_CONNECTIONS: usize = 256;
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
/// How often a waiting connection thread looks at the stop flag.
const TICK: Duration = Duration::from_millis(20);
/// How often the accept loop looks for new connections when there were none.
const ACCEPT_TICK: Duration = Duration::from_millis(2);
const IDLE: Duration = Duration::from_secs(30);

/// One request as the receiver got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request-target, byte for byte as it arrived (`/pb?currency=EUR&cid=a%20b`).
    pub target: Vec<u8>,
    /// Every header in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (by `Content-Length`).
    pub body: Vec<u8>,
    /// The connection it came on, numbered from 0 in accept order.
    pub connection: usize,
}

impl Request {
    /// The request-target as text (it is ASCII on the wire; anything else shows as U+FFFD).
    pub fn target_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.target)
    }

    /// The path, without the query.
    pub fn path(&self) -> String {
        let t = self.target_str();
        t.split('?').next().unwrap_or_default().to_owned()
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the script answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Extra headers (`Location`, `Retry-After`, ...). `Content-Length` is added.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Answer nothing for this long, then close: a partner that hangs.
    pub stall: Option<Duration>,
}

impl Response {
    /// An empty answer with this status.
    pub fn status(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            stall: None,
        }
    }

    /// `200 OK` with body `OK`.
    pub fn ok() -> Response {
        Response::status(200).body("OK")
    }

    /// No answer for `d` (cut short when the receiver stops), then the connection closes.
    pub fn stall(d: Duration) -> Response {
        Response {
            stall: Some(d),
            ..Response::status(0)
        }
    }

    /// Add a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Set the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }
}

#[cfg(feature = "tls")]
type TlsConfig = Arc<rustls::ServerConfig>;
#[cfg(not(feature = "tls"))]
type TlsConfig = std::convert::Infallible;

type Script = dyn Fn(&Request, usize) -> Response + Send + Sync;

struct Shared {
    script: Box<Script>,
    /// Every request with the status answered (`None`: stalled).
    log: Mutex<Vec<(Request, Option<u16>)>>,
    seq: AtomicUsize,
    stop: AtomicBool,
    active: AtomicUsize,
    accepted: AtomicUsize,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls: Option<TlsConfig>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running receiver. Stops (and joins every thread) on [`Receiver::shutdown`] or drop.
pub struct Receiver {
    addr: SocketAddr,
    scheme: &'static str,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listen on 127.0.0.1 and answer request number `n` (from 1, across all connections) with
    /// `script(&request, n)`.
    ///
    /// # Panics
    ///
    /// If no port on 127.0.0.1 can be bound or no thread started (a test cannot go on then); see
    /// [`Receiver::try_start`].
    pub fn start(script: impl Fn(&Request, usize) -> Response + Send + Sync + 'static) -> Receiver {
        Receiver::try_start(script).expect("a receiver on 127.0.0.1")
    }

    /// [`Receiver::start`], returning the error instead.
    pub fn try_start(
        script: impl Fn(&Request, usize) -> Response + Send + Sync + 'static,
    ) -> io::Result<Receiver> {
        Receiver::launch(Box::new(script), None)
    }

    /// Listen on 127.0.0.1 over TLS with this certificate chain and key (a self-signed
    /// certificate for `127.0.0.1` will do; make the client trust it with
    /// [`Roots::Only`](crate::Roots::Only)).
    ///
    /// # Panics
    ///
    /// As [`Receiver::start`], and if rustls refuses the certificate or key; see
    /// [`Receiver::try_start_tls`].
    #[cfg(feature = "tls")]
    pub fn start_tls(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        script: impl Fn(&Request, usize) -> Response + Send + Sync + 'static,
    ) -> Receiver {
        Receiver::try_start_tls(chain, key, script).expect("a TLS receiver on 127.0.0.1")
    }

    /// [`Receiver::start_tls`], returning the error instead.
    #[cfg(feature = "tls")]
    pub fn try_start_tls(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        script: impl Fn(&Request, usize) -> Response + Send + Sync + 'static,
    ) -> io::Result<Receiver> {
        let config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .map_err(io::Error::other)?;
        Receiver::launch(Box::new(script), Some(Arc::new(config)))
    }

    fn launch(script: Box<Script>, tls: Option<TlsConfig>) -> io::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let shared = Arc::new(Shared {
            script,
            log: Mutex::new(Vec::new()),
            seq: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            tls,
            workers: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("receiver-accept".into())
            .spawn(move || accept_loop(&listener, &s))?;
        Ok(Receiver {
            addr,
            scheme,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` over TLS) followed by `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}://{}{path_and_query}", self.scheme, self.addr)
    }

    /// Connections accepted so far (whether or not a request came on them).
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        lock(&self.shared.log).len()
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.log)
            .iter()
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Every request with the status it was answered (`None`: stalled).
    pub fn exchanges(&self) -> Vec<(Request, Option<u16>)> {
        lock(&self.shared.log).clone()
    }

    /// Stop accepting, end every connection and join every thread. Idempotent.
    pub fn shutdown(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = acceptor.join();
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Decrements the active count however a connection thread ends.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut next_connection = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        // Non-blocking, so the stop flag is seen within a tick whatever happens.
        let stream = match listener.accept() {
            Ok((stream, _)) if stream.set_nonblocking(false).is_ok() => stream,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                // Nothing pending (or out of descriptors): wait a little.
                nap(ACCEPT_TICK);
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let id = next_connection;
        next_connection += 1;
        let s = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("receiver-conn-{id}"))
            .spawn(move || {
                let _active = Active(&s.active);
                serve(stream, id, &s);
            });
        match spawned {
            Ok(handle) => {
                let mut workers = lock(&shared.workers);
                workers.retain(|h| !h.is_finished());
                workers.push(handle);
            }
            Err(_) => {
                shared.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// A connection, plain or TLS.
enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => &s.sock,
        }
    }

    fn shutdown(&mut self) {
        #[cfg(feature = "tls")]
        if let Stream::Tls(s) = self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn serve(tcp: TcpStream, connection: usize, shared: &Shared) {
    let _ = tcp.set_read_timeout(Some(TICK));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = tcp.set_nodelay(true);
    let mut stream = match () {
        #[cfg(feature = "tls")]
        () if shared.tls.is_some() => {
            let Some(Ok(conn)) = shared
                .tls
                .as_ref()
                .map(|c| rustls::ServerConnection::new(Arc::clone(c)))
            else {
                return;
            };
            Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
        }
        () => Stream::Plain(tcp),
    };
    let mut buf = Vec::new();
    while let Some((request, keep_alive)) = read_request(&mut stream, &mut buf, connection, shared)
    {
        let n = shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let response = (shared.script)(&request, n);
        let answered = response.stall.is_none().then_some(response.status);
        // Logged before the answer leaves, so a client that has its answer sees it counted.
        lock(&shared.log).push((request, answered));
        if let Some(d) = response.stall {
            let mut waited = Duration::ZERO;
            while waited < d && !shared.stop.load(Ordering::SeqCst) {
                nap(TICK);
                waited += TICK;
            }
            stream.shutdown();
            return;
        }
        let close = !keep_alive
            || response.headers.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close")
            });
        let written = stream
            .write_all(&encode(&response, close))
            .and_then(|()| stream.flush());
        if written.is_err() || close {
            stream.shutdown();
            return;
        }
    }
}

/// Read more bytes; `None` when the peer closed, on error, when idle too long or stopping.
fn fill(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    shared: &Shared,
    idle: &mut Duration,
) -> Option<()> {
    let mut chunk = [0u8; 8192];
    loop {
        if shared.stop.load(Ordering::SeqCst) || *idle >= IDLE {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                *idle = Duration::ZERO;
                return Some(());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                *idle += TICK
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

#[allow(clippy::disallowed_methods)] // a test server may sleep; the library never does
fn nap(d: Duration) {
    std::thread::sleep(d);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The next request on the connection and whether the connection stays open after it.
fn read_request(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    connection: usize,
    shared: &Shared,
) -> Option<(Request, bool)> {
    let mut idle = Duration::ZERO;
    let head_end = loop {
        // A client may send empty lines before a request line.
        while buf.starts_with(b"\r\n") {
            buf.drain(..2);
        }
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        fill(stream, buf, shared, &mut idle)?;
    };
    let head = std::str::from_utf8(&buf[..head_end - 4]).ok()?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let http11 = version == "HTTP/1.1";
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut request = Request {
        method: method.to_owned(),
        target: target.as_bytes().to_vec(),
        headers,
        body: Vec::new(),
        connection,
    };
    if request.header("transfer-encoding").is_some() {
        return None; // chunked request bodies are not supported: close the connection
    }
    let len: usize = request
        .header("content-length")
        .map_or(Some(0), |v| v.parse().ok())?;
    if len > MAX_BODY {
        return None;
    }
    while buf.len() < head_end + len {
        fill(stream, buf, shared, &mut idle)?;
    }
    request.body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    let connection_header = request.header("connection").map(str::to_ascii_lowercase);
    let keep_alive = match connection_header.as_deref() {
        Some("close") => false,
        Some("keep-alive") => true,
        _ => http11,
    };
    Some((request, keep_alive))
}

fn encode(r: &Response, close: bool) -> Vec<u8> {
    let reason = match r.status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", r.status);
    for (k, v) in &r.headers {
        if !k.eq_ignore_ascii_case("content-length") {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
    if close
        && !r
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&r.body);
    out
}
