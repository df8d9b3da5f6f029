//! The console's database sessions: a few [`Db`] connections, made on first use and kept while
//! they live, each lent to one request at a time (a transaction must not interleave with another
//! page's queries). Sessions are named `fraiseql-observers console` in `pg_stat_activity` (not
//! `fraiseql-observers:<id>`, which the status counts as a worker).

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::db::{Db, DbError};

/// Most database sessions the console holds.
pub const MAX_SESSIONS: usize = 4;

/// Connections to the database the console reads and changes.
pub struct Pool {
    url: String,
    idle: Mutex<Vec<Db>>,
    slots: Arc<Semaphore>,
}

/// A connection lent to one request; back to the pool when dropped (unless it is closed).
pub struct Conn<'a> {
    db: Option<Db>,
    pool: &'a Pool,
    _slot: OwnedSemaphorePermit,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        // Set from construction until drop.
        self.db.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            if !db.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(db);
            }
        }
    }
}

impl Pool {
    pub fn new(url: &str) -> Pool {
        Pool {
            url: url.to_string(),
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(MAX_SESSIONS)),
        }
    }

    /// A connection: an idle one, or a new one when none is idle.
    pub async fn get(&self) -> Result<Conn<'_>, DbError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the pool's semaphore is never closed"));
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let db = match idle.filter(|d| !d.is_closed()) {
            Some(db) => db,
            None => {
                let db = Db::connect(&self.url, Arc::new(tokio::sync::Notify::new())).await?;
                db.query_json(
                    "SELECT pg_catalog.to_jsonb(pg_catalog.set_config('application_name', 'fraiseql-observers console', false))::text",
                    &[],
                )
                .await?;
                db
            }
        };
        Ok(Conn {
            db: Some(db),
            pool: self,
            _slot: slot,
        })
    }
}
