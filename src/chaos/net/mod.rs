//! Network faults for the chaos harness.
//!
//! Two layers, because neither can fake the other:
//! - [`proxy`]: a TCP proxy in front of one upstream (PostgreSQL for a pod,
//!   later a client's link to a pod) that delays, throttles, drops, resets
//!   and, knowing PostgreSQL's protocol, cuts a connection right after its
//!   commit landed. It works on streams, so whatever TCP itself would do
//!   (keepalives, retransmission timeouts) never happens: the proxy's own
//!   kernel keeps acknowledging.
//! - [`nft`]: packet rules (nftables) that drop a port's segments in the
//!   kernel, so a link goes half-open or lossy the way a real network does.

mod link;
pub mod nft;
mod pgwire;
pub mod proxy;

pub use nft::{NetnsFaults, NftFaults, RuleId, sweep};
pub use proxy::{Direction, LinkEvent, LinkFault, LinkProxy, LinkStats};
