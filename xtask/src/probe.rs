//! Real client handshakes with each broker, spoken by hand over TCP.
//!
//! "The port is open" proves little: a broker that is still booting, or something else on its port,
//! accepts connections too. Each probe here completes the first real exchange of the broker's protocol
//! and checks the answer: a Kafka Metadata request, an AMQP 0-9-1 connection open with credentials and
//! vhost, a PostgreSQL startup followed by `SELECT 1`. They are deliberately minimal (one request
//! version, no TLS, PLAIN and trust authentication only): enough to say "ready", nothing more.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a probe failed. `Refused` means nothing listens (start something); `Protocol` means something
/// answered but not as expected (a broker still booting, wrong credentials, or a different program).
#[derive(Debug)]
pub enum ProbeError {
    Refused(String),
    Protocol(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Refused(m) | ProbeError::Protocol(m) => f.write_str(m),
        }
    }
}

type Probe<T> = Result<T, ProbeError>;

fn connect(host_port: &str) -> Probe<TcpStream> {
    let addrs = host_port.to_socket_addrs().map_err(|e| {
        ProbeError::Refused(format!("cannot resolve {host_port}: {e}"))
    })?;
    let mut last = format!("no address for {host_port}");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(stream) => {
                stream.set_read_timeout(Some(IO_TIMEOUT)).ok();
                stream.set_write_timeout(Some(IO_TIMEOUT)).ok();
                return Ok(stream);
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(ProbeError::Refused(last))
}

fn io(context: &str) -> impl Fn(io::Error) -> ProbeError + '_ {
    move |e| ProbeError::Protocol(format!("{context}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Kafka: Metadata v1 (api key 3). Every broker since 0.10 answers it, Nisshi included.

/// Sends a Metadata request and returns the brokers the cluster advertises (`host:port` each).
pub fn kafka(bootstrap: &str) -> Probe<Vec<String>> {
    let mut stream = connect(bootstrap)?;
    const CORRELATION_ID: i32 = 0x5eed;
    let client_id = b"xtask-probe";
    let mut req = Vec::new();
    req.extend_from_slice(&3i16.to_be_bytes()); // api key: Metadata
    req.extend_from_slice(&1i16.to_be_bytes()); // api version 1
    req.extend_from_slice(&CORRELATION_ID.to_be_bytes());
    req.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    req.extend_from_slice(client_id);
    req.extend_from_slice(&(-1i32).to_be_bytes()); // topics: null = all
    let mut frame = (req.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&req);
    stream.write_all(&frame).map_err(io("sending Metadata request"))?;

    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(io("reading Metadata response"))?;
    let len = i32::from_be_bytes(len);
    if !(8..=16 << 20).contains(&len) {
        return Err(ProbeError::Protocol(format!(
            "implausible Kafka frame length {len}: not a Kafka broker?"
        )));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).map_err(io("reading Metadata response"))?;
    let mut r = Reader(&body);
    if r.i32()? != CORRELATION_ID {
        return Err(ProbeError::Protocol(
            "Metadata response has the wrong correlation id".into(),
        ));
    }
    let count = r.i32()?;
    let mut brokers = Vec::new();
    for _ in 0..count.max(0) {
        let _node_id = r.i32()?;
        let host = r.string()?;
        let port = r.i32()?;
        let _rack = r.string()?;
        brokers.push(format!("{host}:{port}"));
    }
    if brokers.is_empty() {
        return Err(ProbeError::Protocol(
            "Metadata response lists no brokers (still starting?)".into(),
        ));
    }
    Ok(brokers)
}

// ---------------------------------------------------------------------------------------------
// AMQP 0-9-1: protocol header, Start/Start-Ok (PLAIN), Tune/Tune-Ok, Open/Open-Ok, Close.

/// The parts of an `amqp://user:pass@host:port/vhost` URI the probe needs.
#[derive(Debug, PartialEq)]
pub struct AmqpUri {
    pub host_port: String,
    pub user: String,
    pub pass: String,
    pub vhost: String,
}

impl AmqpUri {
    pub fn parse(uri: &str) -> Result<Self, String> {
        let rest = uri.strip_prefix("amqp://").ok_or_else(|| {
            format!("AMQP_ADDR must start with amqp:// (got {uri})")
        })?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, host) =
            authority.rsplit_once('@').unwrap_or(("guest:guest", authority));
        let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let host_port = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:5672")
        };
        let vhost = match percent_decode(path) {
            v if v.is_empty() => "/".to_owned(),
            v => v,
        };
        Ok(AmqpUri {
            host_port,
            user: percent_decode(user),
            pass: percent_decode(pass),
            vhost,
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const FRAME_METHOD: u8 = 1;
const FRAME_END: u8 = 0xCE;

fn amqp_send(
    stream: &mut TcpStream,
    class: u16,
    method: u16,
    args: &[u8],
) -> Probe<()> {
    let mut payload = Vec::with_capacity(4 + args.len());
    payload.extend_from_slice(&class.to_be_bytes());
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(args);
    let mut frame = vec![FRAME_METHOD, 0, 0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(FRAME_END);
    stream.write_all(&frame).map_err(io("sending AMQP frame"))
}

/// Reads one method frame on channel 0 and returns (class, method, arguments).
fn amqp_recv(stream: &mut TcpStream) -> Probe<(u16, u16, Vec<u8>)> {
    let mut header = [0u8; 7];
    stream.read_exact(&mut header).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
            ProbeError::Protocol(
                "the AMQP server closed the connection (wrong user or password?)"
                    .into(),
            )
        }
        _ => ProbeError::Protocol(format!("reading AMQP frame: {e}")),
    })?;
    if header[0] != FRAME_METHOD {
        return Err(ProbeError::Protocol(format!(
            "expected an AMQP method frame, got frame type {}",
            header[0]
        )));
    }
    let size =
        u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    if size > 1 << 20 {
        return Err(ProbeError::Protocol(format!(
            "implausible AMQP frame size {size}"
        )));
    }
    let mut payload = vec![0u8; size + 1];
    stream.read_exact(&mut payload).map_err(io("reading AMQP frame"))?;
    if payload.pop() != Some(FRAME_END) {
        return Err(ProbeError::Protocol(
            "AMQP frame without frame-end octet".into(),
        ));
    }
    let mut r = Reader(&payload);
    let class = r.u16()?;
    let method = r.u16()?;
    Ok((class, method, r.0.to_vec()))
}

fn shortstr(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// Opens (and closes) an AMQP connection; returns the server's product and version.
pub fn amqp(uri: &AmqpUri) -> Probe<String> {
    let mut stream = connect(&uri.host_port)?;
    stream
        .write_all(b"AMQP\x00\x00\x09\x01")
        .map_err(io("sending AMQP protocol header"))?;
    let (class, method, _) = amqp_recv(&mut stream)?;
    if (class, method) != (10, 10) {
        return Err(ProbeError::Protocol(format!(
            "expected connection.start, got {class}.{method}"
        )));
    }

    let mut start_ok = Vec::new();
    start_ok.extend_from_slice(&0u32.to_be_bytes()); // client-properties: empty table
    shortstr(&mut start_ok, "PLAIN");
    let response = format!("\0{}\0{}", uri.user, uri.pass);
    start_ok.extend_from_slice(&(response.len() as u32).to_be_bytes());
    start_ok.extend_from_slice(response.as_bytes());
    shortstr(&mut start_ok, "en_US");
    amqp_send(&mut stream, 10, 11, &start_ok)?;

    let (class, method, args) = amqp_recv(&mut stream)?;
    if (class, method) == (10, 50) {
        return Err(amqp_close_reason(&args));
    }
    if (class, method) != (10, 30) {
        return Err(ProbeError::Protocol(format!(
            "expected connection.tune, got {class}.{method}"
        )));
    }
    let mut tune = Reader(&args);
    let channel_max = tune.u16()?;
    let frame_max = tune.u32()?;
    let mut tune_ok = Vec::new();
    tune_ok.extend_from_slice(&channel_max.to_be_bytes());
    tune_ok.extend_from_slice(&frame_max.to_be_bytes());
    tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats for a probe
    amqp_send(&mut stream, 10, 31, &tune_ok)?;

    let mut open = Vec::new();
    shortstr(&mut open, &uri.vhost);
    shortstr(&mut open, ""); // reserved
    open.push(0); // reserved bit
    amqp_send(&mut stream, 10, 40, &open)?;
    let (class, method, args) = amqp_recv(&mut stream)?;
    if (class, method) == (10, 50) {
        return Err(amqp_close_reason(&args));
    }
    if (class, method) != (10, 41) {
        return Err(ProbeError::Protocol(format!(
            "expected connection.open-ok, got {class}.{method}"
        )));
    }

    let mut close = Vec::new();
    close.extend_from_slice(&200u16.to_be_bytes());
    shortstr(&mut close, "probe done");
    close.extend_from_slice(&[0, 0, 0, 0]);
    // The answer is already known: a failed goodbye changes nothing, but is reported.
    crate::report_failed(
        "AMQP connection.close",
        amqp_send(&mut stream, 10, 50, &close),
    );
    crate::report_failed("AMQP connection.close-ok", amqp_recv(&mut stream));
    Ok(format!("AMQP 0-9-1, vhost {}", uri.vhost))
}

fn amqp_close_reason(args: &[u8]) -> ProbeError {
    let mut r = Reader(args);
    let reason =
        (|| Ok::<_, ProbeError>(format!("{} {}", r.u16()?, r.shortstr()?)))()
            .unwrap_or_else(|_| "unreadable reason".into());
    ProbeError::Protocol(format!("the AMQP server refused the connection: {reason}"))
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: StartupMessage (protocol 3.0), trust authentication, simple query `SELECT 1`.

/// The parts of a `postgres://user:pass@host:port/db` URL the probe needs.
#[derive(Debug, PartialEq)]
pub struct PgUrl {
    pub host_port: String,
    pub user: String,
    pub database: String,
}

impl PgUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| {
                format!("DATABASE_URL must start with postgres:// (got {url})")
            })?;
        let (authority, database) =
            rest.split_once('/').unwrap_or((rest, "postgres"));
        let database = database.split('?').next().unwrap_or("postgres");
        let (userinfo, host) =
            authority.rsplit_once('@').unwrap_or(("postgres", authority));
        let user = userinfo.split(':').next().unwrap_or("postgres");
        let host_port = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:5432")
        };
        Ok(PgUrl {
            host_port,
            user: percent_decode(user),
            database: percent_decode(database),
        })
    }
}

/// Logs in and runs `SELECT 1`; returns the server version it reports.
pub fn postgres(url: &PgUrl) -> Probe<String> {
    let mut stream = connect(&url.host_port)?;
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes()); // protocol 3.0
    for (k, v) in [("user", url.user.as_str()), ("database", url.database.as_str())]
    {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    stream.write_all(&msg).map_err(io("sending PostgreSQL startup"))?;

    let mut version = String::from("unknown version");
    // Authentication, parameter status, backend key, then ReadyForQuery.
    loop {
        let (tag, payload) = pg_recv(&mut stream)?;
        match tag {
            b'R' => {
                let code = Reader(&payload).i32()?;
                if code != 0 {
                    return Err(ProbeError::Protocol(format!(
                        "PostgreSQL asks for password authentication (method {code}); the probe speaks \
                         trust only: check with `psql \"$DATABASE_URL\" -c 'select 1'`"
                    )));
                }
            }
            b'S' => {
                let mut parts = payload.split(|b| *b == 0);
                if parts.next() == Some(b"server_version") {
                    version =
                        String::from_utf8_lossy(parts.next().unwrap_or_default())
                            .into_owned();
                }
            }
            b'E' => return Err(pg_error(&payload)),
            b'Z' => break,
            _ => {}
        }
    }
    let query = b"SELECT 1\0";
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((query.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(query);
    stream.write_all(&msg).map_err(io("sending SELECT 1"))?;
    let mut rows = 0;
    loop {
        let (tag, payload) = pg_recv(&mut stream)?;
        match tag {
            b'D' => rows += 1,
            b'E' => return Err(pg_error(&payload)),
            b'Z' => break,
            _ => {}
        }
    }
    crate::report_failed(
        "PostgreSQL Terminate",
        stream.write_all(&[b'X', 0, 0, 0, 4]),
    );
    if rows != 1 {
        return Err(ProbeError::Protocol(format!("SELECT 1 returned {rows} rows")));
    }
    Ok(format!("PostgreSQL {version}, database {}", url.database))
}

fn pg_recv(stream: &mut TcpStream) -> Probe<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).map_err(io("reading PostgreSQL message"))?;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if !(4..=1 << 20).contains(&len) {
        return Err(ProbeError::Protocol(format!(
            "implausible PostgreSQL message length {len}: not PostgreSQL?"
        )));
    }
    let mut payload = vec![0u8; len as usize - 4];
    stream.read_exact(&mut payload).map_err(io("reading PostgreSQL message"))?;
    Ok((header[0], payload))
}

fn pg_error(payload: &[u8]) -> ProbeError {
    // Fields: a type byte then a C string; 'M' is the human-readable message.
    let message = payload
        .split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"M"))
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_else(|| "unreadable error".into());
    ProbeError::Protocol(format!("PostgreSQL said: {message}"))
}

// ---------------------------------------------------------------------------------------------

/// A cursor over big-endian wire data that reports truncation as a protocol error.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Probe<[u8; N]> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| ProbeError::Protocol("truncated response".into()))?;
        self.0 = rest;
        Ok(*head)
    }
    fn u16(&mut self) -> Probe<u16> {
        self.take().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Probe<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn i32(&mut self) -> Probe<i32> {
        self.take().map(i32::from_be_bytes)
    }
    /// A Kafka (nullable) string: i16 length, -1 for null.
    fn string(&mut self) -> Probe<String> {
        let len = i16::from_be_bytes(self.take()?);
        if len < 0 {
            return Ok(String::new());
        }
        self.bytes(len as usize)
    }
    /// An AMQP short string: u8 length.
    fn shortstr(&mut self) -> Probe<String> {
        let [len] = self.take()?;
        self.bytes(len as usize)
    }
    fn bytes(&mut self, len: usize) -> Probe<String> {
        if self.0.len() < len {
            return Err(ProbeError::Protocol("truncated response".into()));
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(String::from_utf8_lossy(s).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_amqp_uri() {
        let uri = AmqpUri::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(
            uri,
            AmqpUri {
                host_port: "127.0.0.1:5672".into(),
                user: "guest".into(),
                pass: "guest".into(),
                vhost: "/".into()
            }
        );
        assert_eq!(AmqpUri::parse("amqp://rabbit/shop").unwrap().vhost, "shop");
        assert_eq!(
            AmqpUri::parse("amqp://rabbit").unwrap().host_port,
            "rabbit:5672"
        );
        assert!(AmqpUri::parse("http://rabbit").is_err());
    }

    #[test]
    fn parses_database_urls() {
        let url = PgUrl::parse(
            "postgres://postgres:secret@127.0.0.1:5432/shop?sslmode=disable",
        )
        .unwrap();
        assert_eq!(
            url,
            PgUrl {
                host_port: "127.0.0.1:5432".into(),
                user: "postgres".into(),
                database: "shop".into()
            }
        );
        assert_eq!(PgUrl::parse("postgresql://db").unwrap().host_port, "db:5432");
        assert!(PgUrl::parse("mysql://db").is_err());
    }

    #[test]
    fn percent_decoding_leaves_malformed_escapes_alone() {
        assert_eq!(percent_decode("%2f"), "/");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn nothing_listening_is_refused_not_a_protocol_error() {
        // Bind then drop a listener so the port is very likely closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(matches!(
            kafka(&format!("127.0.0.1:{port}")),
            Err(ProbeError::Refused(_))
        ));
    }

    #[test]
    fn a_server_speaking_another_protocol_is_a_protocol_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 8];
            conn.read_exact(&mut buf[..1]).unwrap();
            conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        });
        let uri = AmqpUri::parse(&format!("amqp://guest:guest@{addr}/%2f")).unwrap();
        assert!(matches!(amqp(&uri), Err(ProbeError::Protocol(_))));
        server.join().unwrap();
    }
}
