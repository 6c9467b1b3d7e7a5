#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The link proxy against a real PostgreSQL, through sqlx as the pods use
//! it: a commit cut after it landed is an error for the client, yet the
//! row is there. The proxy's other faults are tested in its module against
//! fakes; this is the one thing only the real server can show (that the
//! commit point the proxy reads from the protocol is the real one).
//!
//! Needs `VIGIL_TEST_PG_URL` (`scripts/test-all.sh` starts a server); without
//! it the test says so and passes, except under `CI=true`.

mod common;

use common::pg_admin_url;
use sqlx::{Connection as _, PgConnection};
use vigil::chaos::net::{LinkEvent, LinkFault, LinkProxy};
use vigil::cluster::pgserver::{create_scratch_database, drop_database};

#[tokio::test]
async fn a_commit_cut_by_the_proxy_is_an_error_for_the_client_yet_landed() {
    let Some(admin) = pg_admin_url() else { return };
    let (url, db) = create_scratch_database(&admin, "vigil_net").await.unwrap();
    let direct = url::Url::parse(&url).unwrap();
    let upstream = format!(
        "{}:{}",
        direct.host_str().unwrap(),
        direct.port().unwrap_or(5432)
    );
    let proxy = LinkProxy::start("pg", "127.0.0.1:0".parse().unwrap(), &upstream, 1)
        .await
        .unwrap();
    let mut proxied = direct.clone();
    proxied.set_host(Some("127.0.0.1")).unwrap();
    proxied.set_port(Some(proxy.addr().port())).unwrap();

    let mut conn = PgConnection::connect(proxied.as_str()).await.unwrap();
    sqlx::query("CREATE TABLE cut_probe (id int)")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut events = proxy.events();
    proxy.set(LinkFault::CutAfterCommit {
        pattern: "INSERT INTO cut_probe".into(),
        times: 1,
        hang: false,
    });
    let insert = sqlx::query("INSERT INTO cut_probe VALUES (1)")
        .execute(&mut conn)
        .await;
    assert!(insert.is_err(), "the client saw {insert:?}");
    match events.recv().await.unwrap() {
        LinkEvent::CommitCut {
            statement,
            hung: false,
        } => {
            assert_eq!(statement, "INSERT INTO cut_probe VALUES (1)")
        }
        other => panic!("unexpected event {other:?}"),
    }

    // Straight to the server: the commit landed.
    let mut check = PgConnection::connect(&url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cut_probe")
        .fetch_one(&mut check)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the cut insert committed");
    // Once cut, the link is clean again: a new connection through it works.
    let mut again = PgConnection::connect(proxied.as_str()).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cut_probe")
        .fetch_one(&mut again)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(proxy.stats().commits_cut, 1);
    drop((check, again));
    drop_database(&admin, &db).await;
}
