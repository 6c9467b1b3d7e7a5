//! The proxy's tests: real sockets on 127.0.0.1, an echo server or a fake
//! PostgreSQL behind the proxy. Times are only ever lower bounds (a fault
//! took at least its delay); that nothing arrived is shown by what arrives
//! after, never by waiting alone.

use super::*;
use crate::chaos::net::pgwire::build::{bind, execute, msg, parse, query, startup, sync};
use std::future::Future;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A broken proxy fails its test instead of hanging the suite.
async fn bounded(f: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the test hung");
}

fn lo() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An echo server; each connection's count of bytes received, once it
/// ends. It closes its side when the client closes its own.
async fn echo() -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
    let l = TcpListener::bind(lo()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut total, mut buf) = (0, vec![0u8; 4096]);
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => {
                            let _ = s.shutdown().await;
                            break;
                        }
                        Ok(n) => {
                            total += n;
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
                let _ = tx.send(total);
            });
        }
    });
    (addr, rx)
}

async fn proxy_to(upstream: SocketAddr) -> Arc<LinkProxy> {
    LinkProxy::start("test", lo(), &upstream.to_string(), 7)
        .await
        .unwrap()
}

async fn connect(p: &LinkProxy) -> TcpStream {
    let c = TcpStream::connect(p.addr()).await.unwrap();
    c.set_nodelay(true).unwrap();
    c
}

async fn roundtrip(c: &mut TcpStream, data: &[u8]) {
    c.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(back, data);
}

/// Write all of `data` while reading it back (an echo), then close.
async fn echo_all(c: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = c.split();
    let write = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back);
    let ((), got) = tokio::join!(write, read);
    got.unwrap();
    back
}

/// Read until the end of the stream or an error: what came, and the error.
async fn drain(c: &mut TcpStream) -> (Vec<u8>, Option<io::ErrorKind>) {
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        match c.read(&mut buf).await {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Some(e.kind())),
        }
    }
}

#[tokio::test]
async fn bytes_go_through_both_ways_and_close_in_order() {
    bounded(async {
        let (up, mut totals) = echo().await;
        let p = proxy_to(up).await;
        let mut c = connect(&p).await;
        roundtrip(&mut c, b"hello").await;
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(echo_all(&mut c, &big).await, big, "1 MB echoed whole");
        assert_eq!(totals.recv().await, Some(big.len() + 5));
        let s = p.stats();
        assert_eq!(
            (s.accepted, s.bytes_up, s.bytes_down),
            (1, 1_000_005, 1_000_005)
        );
        assert_eq!(p.name(), "test");
    })
    .await;
}

#[tokio::test]
async fn latency_delays_each_direction_at_least_its_ms() {
    bounded(async {
        let (up, _) = echo().await;
        let p = proxy_to(up).await;
        let mut c = connect(&p).await;
        roundtrip(&mut c, b"warm").await;
        p.set(LinkFault::Latency {
            direction: Direction::Up,
            ms: 150,
            jitter_ms: 0,
        });
        let t = Instant::now();
        roundtrip(&mut c, b"one way").await;
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        // A second latency replaces the first, on the open connection too.
        p.set(LinkFault::Latency {
            direction: Direction::Both,
            ms: 100,
            jitter_ms: 0,
        });
        let t = Instant::now();
        roundtrip(&mut c, b"both ways").await;
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        p.heal();
        roundtrip(&mut c, b"healed").await;
    })
    .await;
}

#[tokio::test]
async fn jitter_never_reorders_chunks() {
    bounded(async {
        let (up, _) = echo().await;
        let p = proxy_to(up).await;
        p.set(LinkFault::Latency {
            direction: Direction::Both,
            ms: 20,
            jitter_ms: 19,
        });
        let mut c = connect(&p).await;
        let (mut r, mut w) = c.split();
        let sent: Vec<u8> = (0..300u32).flat_map(|i| i.to_be_bytes()).collect();
        let write = async {
            // One small write at a time, so the proxy reads them as
            // separate chunks, each with its own delay.
            for m in sent.chunks(4) {
                w.write_all(m).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let ((), got) = tokio::join!(write, r.read_to_end(&mut back));
        got.unwrap();
        assert_eq!(back, sent, "order kept under jitter");
    })
    .await;
}

#[tokio::test]
async fn bandwidth_paces_a_direction_at_its_rate() {
    bounded(async {
        let (up, _) = echo().await;
        let p = proxy_to(up).await;
        p.set(LinkFault::Bandwidth {
            direction: Direction::Up,
            bytes_per_sec: 40_000,
        });
        let mut c = connect(&p).await;
        let data = vec![7u8; 20_000];
        let t = Instant::now();
        assert_eq!(echo_all(&mut c, &data).await, data);
        // 20 000 bytes at 40 000 a second.
        assert!(
            t.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn reset_gives_the_client_econnreset_not_eof() {
    bounded(async {
        let (up, _) = echo().await;
        let p = proxy_to(up).await;
        let mut events = p.events();
        let mut c = connect(&p).await;
        roundtrip(&mut c, b"up").await;
        p.set(LinkFault::Reset);
        assert_eq!(
            drain(&mut c).await,
            (vec![], Some(io::ErrorKind::ConnectionReset))
        );
        assert!(matches!(
            events.recv().await.unwrap(),
            LinkEvent::Reset { connections: 1 }
        ));
        // While set, a new connection is accepted and reset at once.
        let mut c = connect(&p).await;
        assert_eq!(
            drain(&mut c).await,
            (vec![], Some(io::ErrorKind::ConnectionReset))
        );
        p.heal();
        let mut c = connect(&p).await;
        roundtrip(&mut c, b"healed").await;
        assert_eq!(p.stats().resets, 2);
    })
    .await;
}

#[tokio::test]
async fn blackhole_forwards_nothing_and_its_heal_resets_the_connection() {
    bounded(async {
        let (up, mut totals) = echo().await;
        let p = proxy_to(up).await;
        let mut events = p.events();
        let mut c = connect(&p).await;
        roundtrip(&mut c, b"ping").await;
        p.set(LinkFault::Blackhole {
            direction: Direction::Up,
        });
        c.write_all(b"lost!").await.unwrap();
        // The proxy has read the bytes (and thrown them away)...
        while p.stats().bytes_dropped < 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ...and the connection is still open: nothing closed it.
        let mut buf = [0u8; 8];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf))
                .await
                .is_err()
        );
        p.heal();
        // Reset at heal, and nothing of "lost!" ever reached the upstream.
        assert_eq!(
            drain(&mut c).await,
            (vec![], Some(io::ErrorKind::ConnectionReset))
        );
        assert_eq!(totals.recv().await, Some(4), "the upstream got only ping");
        assert!(matches!(
            events.recv().await.unwrap(),
            LinkEvent::Reset { connections: 1 }
        ));
        let mut c = connect(&p).await;
        roundtrip(&mut c, b"clean after heal").await;
    })
    .await;
}

#[tokio::test]
async fn slow_close_delays_each_close_and_not_the_data() {
    bounded(async {
        let (up, _) = echo().await;
        let p = proxy_to(up).await;
        p.set(LinkFault::SlowClose { ms: 300 });
        let mut c = connect(&p).await;
        roundtrip(&mut c, b"x").await;
        let t = Instant::now();
        c.write_all(b"tail").await.unwrap();
        c.shutdown().await.unwrap();
        // The echo answers at once, and closes once it sees our close: one
        // delay on the way up, one on the way back.
        assert_eq!(drain(&mut c).await, (b"tail".to_vec(), None));
        assert!(
            t.elapsed() >= Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_open_connections() {
    bounded(async {
        let (up, _) = echo().await;
        let p = proxy_to(up).await;
        let mut c = connect(&p).await;
        roundtrip(&mut c, b"x").await;
        p.shutdown();
        let (got, _) = drain(&mut c).await;
        assert!(got.is_empty());
    })
    .await;
}

/// The fake server's log: (connection number, message type, query text);
/// type b'!' when the connection ended.
type Seen = mpsc::UnboundedReceiver<(usize, u8, String)>;

fn text(body: &[u8], skip_first: bool) -> String {
    let mut parts = body.split(|&b| b == 0);
    if skip_first {
        parts.next();
    }
    String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned()
}

/// A PostgreSQL that speaks just enough: trust authentication, and every
/// extended-protocol or simple query answered as an insert of one row.
/// Like the real one it holds answers until a Sync.
async fn fake_pg() -> (SocketAddr, Seen) {
    let l = TcpListener::bind(lo()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = serve_pg(&mut s, n, &tx).await;
                let _ = tx.send((n, b'!', String::new()));
            });
            n += 1;
        }
    });
    (addr, rx)
}

async fn serve_pg(
    s: &mut TcpStream,
    n: usize,
    log: &mpsc::UnboundedSender<(usize, u8, String)>,
) -> io::Result<()> {
    loop {
        let len = s.read_u32().await? as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await?;
        if body[..4] == 80_877_103u32.to_be_bytes() {
            s.write_all(b"N").await?;
            continue;
        }
        break;
    }
    s.write_all(&[msg(b'R', &[0; 4]), msg(b'Z', b"I")].concat())
        .await?;
    let mut out = Vec::new();
    loop {
        let ty = s.read_u8().await?;
        let len = s.read_u32().await? as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await?;
        let q = match ty {
            b'P' => text(&body, true),
            b'Q' => text(&body, false),
            _ => String::new(),
        };
        let _ = log.send((n, ty, q));
        match ty {
            b'P' => out.extend(msg(b'1', &[])),
            b'B' => out.extend(msg(b'2', &[])),
            b'E' => out.extend(msg(b'C', b"INSERT 0 1\0")),
            b'Q' => {
                out.extend(msg(b'C', b"INSERT 0 1\0"));
                out.extend(msg(b'Z', b"I"));
                s.write_all(&std::mem::take(&mut out)).await?;
            }
            b'S' => {
                out.extend(msg(b'Z', b"I"));
                s.write_all(&std::mem::take(&mut out)).await?;
            }
            b'X' => return Ok(()),
            _ => {}
        }
    }
}

async fn read_msg(s: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let ty = s.read_u8().await?;
    let len = s.read_u32().await? as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await?;
    Ok((ty, body))
}

/// The types of the messages up to and including ReadyForQuery.
async fn until_ready(s: &mut TcpStream) -> Vec<u8> {
    let mut types = Vec::new();
    loop {
        let (ty, _) = read_msg(s).await.unwrap();
        types.push(ty);
        if ty == b'Z' {
            return types;
        }
    }
}

async fn pg_session(p: &LinkProxy) -> TcpStream {
    let mut c = connect(p).await;
    c.write_all(&startup()).await.unwrap();
    assert_eq!(until_ready(&mut c).await, b"RZ");
    c
}

/// Every message the fake server saw on connection `n`, up to its end.
async fn seen_on(seen: &mut Seen, n: usize, kept: &mut Vec<(usize, u8, String)>) -> Vec<u8> {
    loop {
        if kept.iter().any(|&(m, ty, _)| m == n && ty == b'!') {
            return kept
                .iter()
                .filter(|(m, _, _)| *m == n)
                .map(|(_, ty, _)| *ty)
                .collect();
        }
        kept.push(seen.recv().await.unwrap());
    }
}

#[tokio::test]
async fn cut_after_commit_forwards_the_commit_and_resets_the_client() {
    bounded(async {
        let (pg, mut seen) = fake_pg().await;
        let mut kept = Vec::new();
        let p = proxy_to(pg).await;
        let mut events = p.events();
        // Latency alongside: the cut must hold with chunks queued.
        p.set(LinkFault::Latency {
            direction: Direction::Both,
            ms: 20,
            jitter_ms: 10,
        });
        let mut a = pg_session(&p).await;
        a.write_all(&[parse("s0", "SELECT 1"), sync()].concat())
            .await
            .unwrap();
        assert_eq!(until_ready(&mut a).await, b"1Z");
        p.set(LinkFault::CutAfterCommit {
            pattern: "insert into CUT_probe".into(),
            times: 2,
            hang: false,
        });
        // A statement that does not match passes untouched.
        a.write_all(&[bind("", "s0"), execute(""), sync()].concat())
            .await
            .unwrap();
        assert_eq!(until_ready(&mut a).await, b"2CZ");
        // Preparing the matching statement commits nothing: no cut.
        a.write_all(&[parse("s1", "INSERT INTO cut_probe VALUES ($1)"), sync()].concat())
            .await
            .unwrap();
        assert_eq!(until_ready(&mut a).await, b"1Z");
        // Executing it by name, as sqlx does with a statement it cached,
        // sent a byte at a time: cut once the server answered.
        for b in [bind("", "s1"), execute(""), sync()].concat() {
            a.write_all(&[b]).await.unwrap();
        }
        assert_eq!(
            drain(&mut a).await,
            (vec![], Some(io::ErrorKind::ConnectionReset)),
            "reset, and no CommandComplete"
        );
        // The server got the whole statement and its Sync, then the
        // proxy closed its connection.
        assert_eq!(seen_on(&mut seen, 0, &mut kept).await, b"PSBESPSBES!");
        // The simple protocol: the Query message is the commit point.
        let mut b = pg_session(&p).await;
        b.write_all(&query("insert into cut_probe values (2)"))
            .await
            .unwrap();
        assert_eq!(
            drain(&mut b).await,
            (vec![], Some(io::ErrorKind::ConnectionReset))
        );
        assert_eq!(seen_on(&mut seen, 1, &mut kept).await, b"Q!");
        // Two cuts were asked for: the third statement goes through.
        let mut c = pg_session(&p).await;
        c.write_all(&query("insert into cut_probe values (3)"))
            .await
            .unwrap();
        assert_eq!(until_ready(&mut c).await, b"CZ");
        let mut cut = Vec::new();
        for _ in 0..2 {
            match events.recv().await.unwrap() {
                LinkEvent::CommitCut {
                    statement,
                    hung: false,
                } => cut.push(statement),
                other => panic!("unexpected event {other:?}"),
            }
        }
        assert_eq!(
            cut,
            [
                "INSERT INTO cut_probe VALUES ($1)",
                "insert into cut_probe values (2)"
            ]
        );
        assert_eq!(p.stats().commits_cut, 2);
    })
    .await;
}

#[tokio::test]
async fn an_ssl_request_answered_n_keeps_the_cut_working() {
    bounded(async {
        let (pg, _seen) = fake_pg().await;
        let p = proxy_to(pg).await;
        p.set(LinkFault::CutAfterCommit {
            pattern: "COMMIT".into(),
            times: 1,
            hang: false,
        });
        let mut c = connect(&p).await;
        c.write_all(&crate::chaos::net::pgwire::build::ssl_request())
            .await
            .unwrap();
        assert_eq!(c.read_u8().await.unwrap(), b'N');
        c.write_all(&startup()).await.unwrap();
        assert_eq!(until_ready(&mut c).await, b"RZ");
        c.write_all(&query("BEGIN")).await.unwrap();
        assert_eq!(until_ready(&mut c).await, b"CZ");
        c.write_all(&query("commit")).await.unwrap();
        assert_eq!(
            drain(&mut c).await,
            (vec![], Some(io::ErrorKind::ConnectionReset))
        );
    })
    .await;
}

#[tokio::test]
async fn a_hanging_cut_leaves_the_client_open_and_silent_until_shutdown() {
    bounded(async {
        let (pg, mut seen) = fake_pg().await;
        let p = proxy_to(pg).await;
        let mut events = p.events();
        p.set(LinkFault::CutAfterCommit {
            pattern: "COMMIT".into(),
            times: 1,
            hang: true,
        });
        let mut c = pg_session(&p).await;
        c.write_all(&query("BEGIN")).await.unwrap();
        assert_eq!(until_ready(&mut c).await, b"CZ");
        c.write_all(&query("COMMIT")).await.unwrap();
        // The event comes once the server answered and its connection was
        // closed, after the point where a plain cut resets the client.
        match events.recv().await.unwrap() {
            LinkEvent::CommitCut { statement, hung } => {
                assert_eq!(statement, "COMMIT");
                assert!(hung);
            }
            other => panic!("unexpected event {other:?}"),
        }
        let mut kept = Vec::new();
        assert_eq!(seen_on(&mut seen, 0, &mut kept).await, b"QQ!");
        // Neither reset nor closed, and no byte of the answer: the read
        // would block.
        let mut buf = [0u8; 64];
        match c.try_read(&mut buf) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            Ok(n) => panic!("the client read {n} bytes (0: closed) instead of hanging"),
        }
        // What the client sends goes nowhere and gets no answer.
        c.write_all(&query("SELECT 1")).await.unwrap();
        p.shutdown();
        let (got, _) = drain(&mut c).await;
        assert!(got.is_empty(), "{got:?}");
    })
    .await;
}
