//! How the worker's two small HTTP servers (the metrics server, the operator console) take
//! connections, so that a visitor without a token cannot exhaust the process the worker runs
//! in: at most [`MAX_CONNECTIONS`] are served at once (a client beyond waits in the listen
//! backlog, and no file descriptor of the worker is spent on it), a request's headers must
//! arrive within [`HEADER_TIMEOUT`], and an accept that fails (the process is out of file
//! descriptors) pauses the loop for [`ACCEPT_PAUSE`] instead of retrying at once, which spun a
//! core.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most connections served at once by one server.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest wait for a request's headers (each request of a kept-alive connection too).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept that failed.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The connections of one server: a permit per connection served.
#[derive(Debug, Clone)]
pub struct Connections {
    permits: Arc<Semaphore>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections::new(MAX_CONNECTIONS)
    }
}

impl Connections {
    pub fn new(max: usize) -> Self {
        Connections {
            permits: Arc::new(Semaphore::new(max)),
        }
    }

    /// The next connection, once fewer than the maximum are served; hold the permit for as
    /// long as the connection is served. `server` names the server in the log of a failed
    /// accept.
    pub async fn accept(
        &self,
        listener: &TcpListener,
        server: &str,
    ) -> (TcpStream, OwnedSemaphorePermit) {
        loop {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                // Never closed; were it, waiting would be all there is to do.
                std::future::pending::<()>().await;
                continue;
            };
            match listener.accept().await {
                Ok((stream, _)) => return (stream, permit),
                Err(e) => {
                    tracing::warn!(server, error = %e, "cannot accept a connection; pausing");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            }
        }
    }
}

/// An HTTP/1 connection builder with the header time limit.
pub fn http1() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_beyond_the_maximum_wait_until_one_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Connections::new(2);
        let _clients: Vec<_> =
            futures_util::future::join_all((0..3).map(|_| tokio::net::TcpStream::connect(addr)))
                .await;
        let (_a, first) = connections.accept(&listener, "test").await;
        let (_b, second) = connections.accept(&listener, "test").await;
        let third = connections.accept(&listener, "test");
        tokio::pin!(third);
        // Two are served: the third is not taken while both permits are held...
        assert!(
            futures_util::poll!(third.as_mut()).is_pending(),
            "a third connection was accepted beyond the maximum"
        );
        // ... and is once one of them ends.
        drop(first);
        let (_c, _third) = third.await;
        drop(second);
    }
}
