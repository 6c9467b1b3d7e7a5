//! Just enough of PostgreSQL's wire protocol (version 3) for the proxy's
//! CutAfterCommit fault: where each message ends in the byte stream, which
//! statements a batch executes, and when the server says it is ready again.
//!
//! Everything here is streaming: a message may be split over any number of
//! TCP reads, and one read may hold many messages. Bodies are kept only as
//! far as they are needed (a query's text, a statement's name), so a COPY of
//! gigabytes costs nothing but counting.
//!
//! The proxy also carries links that are not PostgreSQL (HTTP to a pod):
//! the first bytes that do not look like the protocol switch the parser off
//! for that connection, and the bytes are forwarded untouched as always.

use std::collections::HashMap;

/// The type given to a single unframed byte: the server's answer to an
/// SSLRequest or GSSENCRequest ('N', 'S' or 'G'), the only unframed bytes a
/// server ever sends.
pub(crate) const RAW: u8 = 0xff;

/// The type given to a frontend message without a type byte (SSLRequest,
/// GSSENCRequest, CancelRequest, StartupMessage).
pub(crate) const UNTYPED: u8 = 0;

/// No message of ours comes near this; a longer "length" means the bytes
/// are not PostgreSQL's protocol.
const MAX_LEN: usize = 1 << 30;

/// A query's text is kept whole up to this size; beyond it only its start is
/// matched against a pattern.
const MAX_QUERY: usize = 1 << 20;

/// Names (statements, portals) are at most NAMEDATALEN (64) bytes.
const MAX_NAME: usize = 256;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// One message, once its last byte has been read.
#[derive(Debug)]
pub(crate) struct Msg {
    /// Offset just past the message's last byte in the slice given to
    /// [`Framer::next`].
    pub end: usize,
    pub ty: u8,
    /// The body's first bytes (as many as the caller asked to keep).
    pub body: Vec<u8>,
}

/// Splits a byte stream into messages: `[type byte] int32 length (itself
/// included) body`.
#[derive(Debug)]
pub(crate) struct Framer {
    /// The next message has no type byte (the frontend's first ones).
    pub untyped: bool,
    /// Unframed single bytes expected before the next message.
    raw_pending: u32,
    hdr: [u8; 5],
    hdr_len: usize,
    ty: u8,
    in_body: bool,
    remaining: usize,
    keep: usize,
    body: Vec<u8>,
    broken: bool,
}

impl Framer {
    pub(crate) fn new(untyped: bool) -> Framer {
        Framer {
            untyped,
            raw_pending: 0,
            hdr: [0; 5],
            hdr_len: 0,
            ty: 0,
            in_body: false,
            remaining: 0,
            keep: 0,
            body: Vec::new(),
            broken: false,
        }
    }

    /// True once the stream stopped looking like the protocol.
    pub(crate) fn broken(&self) -> bool {
        self.broken
    }

    /// The next byte the peer sends is one unframed byte.
    pub(crate) fn expect_raw_byte(&mut self) {
        self.raw_pending += 1;
    }

    /// The next complete message in `data` from `*pos` on, advancing `*pos`
    /// past it; `None` when `data` is used up (the rest of a message waits
    /// for the next call) or the stream is broken. `keep` says how many body
    /// bytes of a message of that type to keep.
    pub(crate) fn next(
        &mut self,
        data: &[u8],
        pos: &mut usize,
        keep: impl Fn(u8) -> usize,
    ) -> Option<Msg> {
        while !self.broken {
            if self.in_body {
                let take = self.remaining.min(data.len() - *pos);
                let want = self.keep.saturating_sub(self.body.len()).min(take);
                self.body.extend_from_slice(&data[*pos..*pos + want]);
                *pos += take;
                self.remaining -= take;
                if self.remaining > 0 {
                    return None;
                }
                self.in_body = false;
                self.hdr_len = 0;
                return Some(Msg {
                    end: *pos,
                    ty: self.ty,
                    body: std::mem::take(&mut self.body),
                });
            }
            if *pos == data.len() {
                return None;
            }
            if self.raw_pending > 0 && self.hdr_len == 0 {
                self.raw_pending -= 1;
                *pos += 1;
                return Some(Msg {
                    end: *pos,
                    ty: RAW,
                    body: vec![data[*pos - 1]],
                });
            }
            let hlen = if self.untyped { 4 } else { 5 };
            let take = (hlen - self.hdr_len).min(data.len() - *pos);
            self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&data[*pos..*pos + take]);
            self.hdr_len += take;
            *pos += take;
            if self.hdr_len < hlen {
                return None;
            }
            let (ty, len) = if self.untyped {
                (UNTYPED, be32(&self.hdr[0..4]))
            } else {
                (self.hdr[0], be32(&self.hdr[1..5]))
            };
            let len = len as usize;
            if !(4..=MAX_LEN).contains(&len) {
                self.broken = true;
                return None;
            }
            self.ty = ty;
            self.remaining = len - 4;
            self.keep = keep(ty);
            self.body.clear();
            self.in_body = true;
        }
        None
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A NUL-terminated string at the start of `b` (all of `b` when it was cut
/// short), and what follows its NUL.
fn cstr(b: &[u8]) -> (String, &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (String::from_utf8_lossy(&b[..i]).into_owned(), &b[i + 1..]),
        None => (String::from_utf8_lossy(b).into_owned(), &[]),
    }
}

/// What the client side's stream says, message by message.
#[derive(Debug, PartialEq)]
pub(crate) enum FrontEvent {
    /// An SSLRequest or GSSENCRequest: the server answers with one unframed
    /// byte.
    Negotiate,
    /// The StartupMessage: the server answers, after authentication, with a
    /// ReadyForQuery.
    Startup,
    /// A Sync or a simple Query: the server answers with a ReadyForQuery
    /// once everything before it is done (and, outside a transaction block,
    /// committed). `executed` holds the text of each statement run since the
    /// previous one.
    Ready { executed: Vec<String> },
    /// Not the protocol (or a CancelRequest, after which nothing is ours to
    /// follow): stop parsing this connection.
    Off,
    /// Anything else.
    Other,
}

/// The client side (frontend) of one connection.
#[derive(Debug)]
pub(crate) struct Frontend {
    framer: Framer,
    /// Prepared statement name (the unnamed "" too) to its query text:
    /// sqlx prepares a statement once per connection and later only binds
    /// and executes it by name.
    statements: HashMap<String, String>,
    /// Portal name to the query text of the statement bound to it.
    portals: HashMap<String, String>,
    /// Statements executed since the last Sync.
    batch: Vec<String>,
}

impl Default for Frontend {
    fn default() -> Self {
        Frontend {
            framer: Framer::new(true),
            statements: HashMap::new(),
            portals: HashMap::new(),
            batch: Vec::new(),
        }
    }
}

impl Frontend {
    pub(crate) fn broken(&self) -> bool {
        self.framer.broken()
    }

    /// The next complete message in `data` from `*pos` on, and what it
    /// means; `None` when `data` is used up.
    pub(crate) fn next(&mut self, data: &[u8], pos: &mut usize) -> Option<(usize, FrontEvent)> {
        let m = self.framer.next(data, pos, |ty| match ty {
            UNTYPED => 4,
            b'P' | b'Q' => MAX_QUERY,
            b'B' | b'E' | b'C' => 2 * MAX_NAME,
            _ => 0,
        })?;
        let ev = match m.ty {
            UNTYPED => {
                let code = if m.body.len() >= 4 { be32(&m.body) } else { 0 };
                match code {
                    SSL_REQUEST | GSSENC_REQUEST => FrontEvent::Negotiate,
                    // 3.0, and the minor versions newer servers negotiate.
                    c if c >> 16 == 3 => {
                        self.framer.untyped = false;
                        FrontEvent::Startup
                    }
                    // A cancel's connection carries nothing else.
                    CANCEL_REQUEST => FrontEvent::Off,
                    // Not PostgreSQL.
                    _ => FrontEvent::Off,
                }
            }
            b'P' => {
                let (name, rest) = cstr(&m.body);
                let (query, _) = cstr(rest);
                self.statements.insert(name, query);
                FrontEvent::Other
            }
            b'B' => {
                let (portal, rest) = cstr(&m.body);
                let (statement, _) = cstr(rest);
                match self.statements.get(&statement) {
                    Some(q) => {
                        self.portals.insert(portal, q.clone());
                    }
                    None => {
                        self.portals.remove(&portal);
                    }
                }
                FrontEvent::Other
            }
            b'E' => {
                let (portal, _) = cstr(&m.body);
                if let Some(q) = self.portals.get(&portal) {
                    self.batch.push(q.clone());
                }
                FrontEvent::Other
            }
            b'C' => {
                let kind = m.body.first().copied();
                let (name, _) = cstr(m.body.get(1..).unwrap_or_default());
                match kind {
                    Some(b'S') => self.statements.remove(&name),
                    Some(b'P') => self.portals.remove(&name),
                    _ => None,
                };
                FrontEvent::Other
            }
            b'S' => FrontEvent::Ready {
                executed: std::mem::take(&mut self.batch),
            },
            b'Q' => {
                let (query, _) = cstr(&m.body);
                FrontEvent::Ready {
                    executed: vec![query],
                }
            }
            _ => FrontEvent::Other,
        };
        Some((m.end, ev))
    }
}

/// What the server side's stream says.
#[derive(Debug, PartialEq)]
pub(crate) enum BackEvent {
    /// The answer to an SSLRequest or GSSENCRequest: 'N' (go on in clear)
    /// or 'S'/'G' (encrypted from here: nothing more to parse).
    Answer(u8),
    /// ReadyForQuery, with the transaction status ('I' idle, 'T' in a
    /// transaction block, 'E' in a failed one).
    Ready(u8),
    Other,
}

/// The server side (backend) of one connection.
#[derive(Debug)]
pub(crate) struct Backend {
    framer: Framer,
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            framer: Framer::new(false),
        }
    }
}

impl Backend {
    pub(crate) fn broken(&self) -> bool {
        self.framer.broken()
    }

    /// The client asked for encryption: the server's next byte is its
    /// unframed answer.
    pub(crate) fn expect_answer(&mut self) {
        self.framer.expect_raw_byte();
    }

    pub(crate) fn next(&mut self, data: &[u8], pos: &mut usize) -> Option<(usize, BackEvent)> {
        let m = self
            .framer
            .next(data, pos, |ty| if ty == b'Z' { 1 } else { 0 })?;
        let ev = match m.ty {
            RAW => BackEvent::Answer(m.body.first().copied().unwrap_or(0)),
            b'Z' => BackEvent::Ready(m.body.first().copied().unwrap_or(0)),
            _ => BackEvent::Other,
        };
        Some((m.end, ev))
    }
}

/// What the proxy does with a chunk it read.
#[derive(Debug, PartialEq)]
pub(crate) enum Pass {
    All,
    /// Only the first bytes (up to and including a commit point), then
    /// nothing more.
    Prefix(usize),
    /// Nothing (a cut under way holds the server's answers back).
    Withhold,
    /// The commit landed: cut the connection.
    Cut(String),
    /// The cut cannot be finished (the server went away, or its bytes
    /// stopped making sense, before it answered).
    Reset,
}

/// Both directions of one connection, as far as a cut needs them.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// Not PostgreSQL, or no longer readable (encrypted, bytes dropped).
    off: bool,
    front: Frontend,
    back: Backend,
    /// ReadyForQuery messages the server owes for what was forwarded.
    sent_ready: u64,
    /// ReadyForQuery messages it sent.
    seen_ready: u64,
    armed: Option<Armed>,
}

/// A cut waiting for the server to answer the committing statement.
#[derive(Debug)]
struct Armed {
    /// The ReadyForQuery (counted from the connection's first) that answers
    /// it.
    ready: u64,
    statement: String,
}

impl Session {
    /// Bytes were lost (a blackhole): what follows cannot be parsed.
    pub(crate) fn stop(&mut self) {
        self.off = true;
    }

    /// A cut is under way.
    pub(crate) fn cutting(&self) -> bool {
        self.armed.is_some()
    }

    /// The client's bytes: where a commit point is. `cut` is asked about
    /// each statement a commit point commits, first to last; the first it
    /// says yes to is cut (it counts its cuts itself).
    pub(crate) fn client_bytes(&mut self, data: &[u8], mut cut: impl FnMut(&str) -> bool) -> Pass {
        if self.off {
            return Pass::All;
        }
        let mut pos = 0;
        while let Some((end, ev)) = self.front.next(data, &mut pos) {
            match ev {
                FrontEvent::Negotiate => self.back.expect_answer(),
                FrontEvent::Startup => self.sent_ready += 1,
                FrontEvent::Ready { executed } => {
                    self.sent_ready += 1;
                    if let Some(statement) = executed.into_iter().find(|q| cut(q)) {
                        self.armed = Some(Armed {
                            ready: self.sent_ready,
                            statement,
                        });
                        return Pass::Prefix(end);
                    }
                }
                FrontEvent::Off => {
                    self.off = true;
                    return Pass::All;
                }
                FrontEvent::Other => {}
            }
        }
        if self.front.broken() {
            self.off = true;
        }
        Pass::All
    }

    /// The server's bytes: whether the answer a cut waits for has come.
    pub(crate) fn server_bytes(&mut self, data: &[u8]) -> Pass {
        if !self.off {
            let mut pos = 0;
            while let Some((_, ev)) = self.back.next(data, &mut pos) {
                match ev {
                    BackEvent::Answer(b'N') | BackEvent::Other => {}
                    // Encrypted from here on: nothing more to read.
                    BackEvent::Answer(_) => {
                        self.off = true;
                        break;
                    }
                    BackEvent::Ready(_) => self.seen_ready += 1,
                }
            }
            if self.back.broken() {
                self.off = true;
            }
        }
        match &self.armed {
            Some(a) if self.seen_ready >= a.ready => Pass::Cut(a.statement.clone()),
            Some(_) if self.off => Pass::Reset,
            Some(_) => Pass::Withhold,
            None => Pass::All,
        }
    }
}

/// Builders for the messages the tests send and answer with.
#[cfg(test)]
pub(crate) mod build {
    pub fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![ty];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn cstrs(parts: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        for p in parts {
            b.extend_from_slice(p.as_bytes());
            b.push(0);
        }
        b
    }

    pub fn untyped(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut m = (rest.len() as u32 + 8).to_be_bytes().to_vec();
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(rest);
        m
    }

    pub fn startup() -> Vec<u8> {
        untyped(196_608, &cstrs(&["user", "postgres", ""]))
    }

    pub fn ssl_request() -> Vec<u8> {
        untyped(super::SSL_REQUEST, &[])
    }

    pub fn parse(name: &str, query: &str) -> Vec<u8> {
        let mut b = cstrs(&[name, query]);
        b.extend_from_slice(&0u16.to_be_bytes());
        msg(b'P', &b)
    }

    pub fn bind(portal: &str, statement: &str) -> Vec<u8> {
        let mut b = cstrs(&[portal, statement]);
        // No parameter formats, no parameters, no result formats.
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        msg(b'B', &b)
    }

    pub fn execute(portal: &str) -> Vec<u8> {
        let mut b = cstrs(&[portal]);
        b.extend_from_slice(&0u32.to_be_bytes());
        msg(b'E', &b)
    }

    pub fn sync() -> Vec<u8> {
        msg(b'S', &[])
    }

    pub fn query(q: &str) -> Vec<u8> {
        msg(b'Q', &cstrs(&[q]))
    }

    pub fn close_statement(name: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        b.extend_from_slice(&cstrs(&[name]));
        msg(b'C', &b)
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    /// Feed `data` to a fresh frontend in pieces of `step` bytes; every
    /// event with its end offset in the whole stream.
    fn front_events(data: &[u8], step: usize) -> Vec<(usize, FrontEvent)> {
        let mut f = Frontend::default();
        let mut out = Vec::new();
        let mut base = 0;
        for piece in data.chunks(step) {
            let mut pos = 0;
            while let Some((end, ev)) = f.next(piece, &mut pos) {
                out.push((base + end, ev));
            }
            assert_eq!(pos, piece.len(), "a piece is always used up");
            base += piece.len();
        }
        out
    }

    fn session() -> Vec<u8> {
        [
            ssl_request(),
            startup(),
            parse("s1", "INSERT INTO t VALUES ($1)"),
            sync(),
            parse("", "SELECT 1"),
            bind("", ""),
            execute(""),
            bind("p", "s1"),
            execute("p"),
            sync(),
            query("COMMIT"),
            close_statement("s1"),
            bind("", "s1"),
            execute(""),
            sync(),
        ]
        .concat()
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_messages() {
        let data = session();
        let whole = front_events(&data, data.len());
        for step in [1, 2, 3, 5, 7, 64] {
            assert_eq!(front_events(&data, step), whole, "pieces of {step} bytes");
        }
        let readies: Vec<_> = whole
            .iter()
            .filter_map(|(end, ev)| match ev {
                FrontEvent::Ready { executed } => Some((*end, executed.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(whole[0].1, FrontEvent::Negotiate);
        assert_eq!(whole[1].1, FrontEvent::Startup);
        assert_eq!(readies.len(), 4, "{readies:?}");
        // Preparing runs nothing.
        assert!(readies[0].1.is_empty());
        // The unnamed statement and s1, executed by name through portal p.
        assert_eq!(readies[1].1, ["SELECT 1", "INSERT INTO t VALUES ($1)"]);
        assert_eq!(readies[2].1, ["COMMIT"]);
        // s1 was closed: binding it again names nothing we know.
        assert!(readies[3].1.is_empty());
        // Each Sync ends where its bytes end.
        assert_eq!(readies[3].0, data.len());
    }

    #[test]
    fn a_cut_waits_for_the_ready_that_answers_its_own_commit() {
        let mut s = Session::default();
        let insert = query("INSERT INTO t VALUES (1)");
        let client = [
            startup(),
            parse("", "SELECT 1"),
            bind("", ""),
            execute(""),
            sync(),
            insert,
            sync(),
        ]
        .concat();
        // Forwarded up to the end of the committing query, not the Sync after.
        let pass = s.client_bytes(&client, |q| q.contains("INSERT"));
        assert_eq!(pass, Pass::Prefix(client.len() - sync().len()));
        assert!(s.cutting());
        // The answers to the startup and to the SELECT's Sync: not yet.
        let server = [
            msg(b'R', &[0; 4]),
            msg(b'Z', b"I"),
            msg(b'1', &[]),
            msg(b'2', &[]),
            msg(b'C', b"SELECT 1\0"),
            msg(b'Z', b"I"),
            msg(b'C', b"INSERT 0 1\0"),
        ]
        .concat();
        assert_eq!(s.server_bytes(&server), Pass::Withhold);
        assert_eq!(
            s.server_bytes(&msg(b'Z', b"I")),
            Pass::Cut("INSERT INTO t VALUES (1)".into())
        );
    }

    #[test]
    fn bytes_that_are_not_postgres_switch_parsing_off() {
        let http = b"GET /v1/runs HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut f = Frontend::default();
        let mut pos = 0;
        let mut evs = Vec::new();
        while let Some((_, ev)) = f.next(http, &mut pos) {
            evs.push(ev);
        }
        assert!(f.broken() || evs.contains(&FrontEvent::Off), "{evs:?}");
    }

    #[test]
    fn the_server_answer_to_ssl_is_one_unframed_byte() {
        let mut b = Backend::default();
        b.expect_answer();
        let data = [
            b"N".to_vec(),
            msg(b'R', &0u32.to_be_bytes()),
            msg(b'Z', b"I"),
            msg(b'C', b"INSERT 0 1\0"),
            msg(b'Z', b"T"),
        ]
        .concat();
        let mut evs = Vec::new();
        for piece in data.chunks(3) {
            let mut pos = 0;
            while let Some((_, ev)) = b.next(piece, &mut pos) {
                evs.push(ev);
            }
        }
        assert_eq!(
            evs,
            [
                BackEvent::Answer(b'N'),
                BackEvent::Other,
                BackEvent::Ready(b'I'),
                BackEvent::Other,
                BackEvent::Ready(b'T'),
            ]
        );
    }
}
