//! etcd v3 backend through `etcd-client`.
//!
//! Every operation maps onto one etcd request, so each is atomic on the server: conditional
//! writes are transactions whose failure branch reads the compared keys back, which is how
//! a failed compare-and-swap tells "changed" ([`StoreError::Conflict`]) from "gone"
//! ([`StoreError::NotFound`]) without a second round trip.
//!
//! The connections are lazy and self-healing: [`EtcdStore::connect`] only checks the
//! configuration, and each member's gRPC channel reconnects when it breaks.
//!
//! # Several members
//!
//! Each endpoint (one per etcd member) has a connection of its own, and requests go to one
//! member at a time: the last one that answered. A member that refuses the connection,
//! answers that it has no leader, or does not answer within [`EtcdConfig::attempt_timeout`]
//! (stopped, partitioned) loses that place, and the request is sent again to the next member,
//! until one answers or [`EtcdConfig::request_timeout`] has passed. So a member that dies or
//! stalls costs the requests in flight on it one attempt, and later requests nothing, as long
//! as a quorum answers. A request fails as [`StoreError::Unavailable`], naming every member
//! and why each failed, when the deadline passes or when no member accepts a connection.
//!
//! Sending a request again is safe because every write wren makes is conditional or
//! idempotent: a conditional write whose first attempt was applied although its answer was
//! lost (a leader that died after committing) fails its condition on the second attempt with
//! [`StoreError::Conflict`] (or [`StoreError::NotFound`] for a delete), and the caller's
//! re-read finds its own write; an unconditional put writes the same value twice.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, Identity,
    KeyValue as EtcdKeyValue, KvClient, LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions,
    Txn as EtcdTxn, TxnOp as EtcdTxnOp, TxnOpResponse, WatchOptions,
};

use crate::{
    Compare, KeyValue, LeaseId, Listing, Result, Revision, Store, StoreError, Txn, TxnOp,
    WatchEvent, WatchStream,
};

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Endpoints (`http://127.0.0.1:2379`, `https://10.0.0.1:2379`, …).
    pub endpoints: Vec<String>,
    /// Key prefix of wren's data (default `/wren/v1/`); every key the store sees is relative to it.
    pub prefix: String,
    /// CA certificate (PEM) to verify the server with; enables TLS.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub key: Option<PathBuf>,
    /// Time allowed to establish a connection. When no endpoint accepts a connection within
    /// it, a request fails as [`StoreError::Unavailable`] without waiting for
    /// `request_timeout`.
    pub dial_timeout: Duration,
    /// Time allowed for one request, every attempt on every member included.
    pub request_timeout: Duration,
    /// With more than one endpoint: time one member has to answer an attempt before the
    /// request is sent to the next member. It doubles each time every member has been tried,
    /// so a slow answer (a large listing) gets its time in the end. Keep it above the time
    /// etcd takes to commit a write (a few round trips) and near its election timeout.
    pub attempt_timeout: Duration,
}

/// Default key prefix of wren's data in etcd.
pub const DEFAULT_PREFIX: &str = "/wren/v1/";

/// Largest response the client accepts: listings of many IPAM blocks exceed gRPC's 4 MiB
/// default long before they trouble etcd.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// HTTP/2 ping period that detects a dead or stopped member while a watch waits quietly;
/// etcd refuses pings more often than every 5 s by default. Pings are sent only while a
/// request or watch is open: etcd closes idle connections that ping.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(6);

/// Longest wait for a ping's answer before the connection counts as dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Pause after every member has failed an attempt, before the next round.
const ROUND_PAUSE: Duration = Duration::from_millis(100);

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: DEFAULT_PREFIX.into(),
            ca: None,
            cert: None,
            key: None,
            dial_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
        }
    }
}

/// The etcd backend. Cheap to clone; clones share the connections and the choice of member.
#[derive(Clone)]
pub struct EtcdStore {
    members: Arc<[Member]>,
    /// Index of the member requests go to first: the last one that answered.
    preferred: Arc<AtomicUsize>,
    prefix: String,
    endpoints: Vec<String>,
    dial_timeout: Duration,
    request_timeout: Duration,
    attempt_timeout: Duration,
    /// The keep-alive stream of each lease being renewed, kept open between renewals.
    renewals: Arc<std::sync::Mutex<HashMap<LeaseId, Renewal>>>,
}

/// A lease's keep-alive stream: each renewal is one request and one answer on it, as etcd's
/// own clients do, rather than a stream opened and closed per renewal.
struct Renewal {
    keeper: LeaseKeeper,
    answers: LeaseKeepAliveStream,
    /// When it last renewed: a stream no one has used for [`RENEWAL_IDLE`] is closed.
    used: std::time::Instant,
}

/// A lease's keep-alive stream unused this long belongs to a lease no longer renewed (its
/// holder stopped without revoking it): it is closed at the next renewal of any lease.
const RENEWAL_IDLE: Duration = Duration::from_secs(600);

/// One etcd member's endpoint and the connection to it alone.
#[derive(Clone)]
struct Member {
    endpoint: String,
    client: Client,
    kv: KvClient,
}

/// Why one attempt on one member failed, and whether the member took a connection at all.
struct AttemptFailure {
    reason: String,
    unreachable: bool,
}

/// A request's answer, the member that gave it, and whether an earlier attempt on another
/// member failed in a way that leaves open whether it was carried out.
struct Answer<T> {
    value: T,
    member: usize,
    retried_unsure: bool,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Builds the client. Fails only on configuration ([`StoreError::Config`]: no endpoint, a
    /// TLS file that cannot be read, a malformed URL); the connection itself is made on first
    /// use and remade whenever it breaks.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Config("no etcd endpoint given".into()));
        }
        // A member cut off from the quorum answers "no leader" at once instead of holding
        // the request (or a watch) until it times out.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.dial_timeout)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        if let Some(tls) = tls_options(&config)? {
            options = options.with_tls(tls);
        }
        let mut members = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let client = Client::connect([endpoint], Some(options.clone()))
                .await
                .map_err(|e| StoreError::Config(format!("etcd client for {endpoint}: {e}")))?;
            let kv = client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES);
            members.push(Member {
                endpoint: endpoint.clone(),
                client,
                kv,
            });
        }
        Ok(Self {
            members: members.into(),
            preferred: Arc::default(),
            prefix: config.prefix,
            endpoints: config.endpoints,
            dial_timeout: config.dial_timeout,
            request_timeout: config.request_timeout,
            attempt_timeout: config.attempt_timeout,
            renewals: Arc::default(),
        })
    }

    /// Renews `lease` on its open keep-alive stream, if it has one that answers within an
    /// attempt's time. `None`: no stream, or it failed (it is dropped, and the caller opens
    /// a new one, on whichever member answers).
    async fn renew_on_open_stream(&self, lease: LeaseId) -> Option<Result<()>> {
        let mut renewal = {
            let mut renewals = self.renewals();
            renewals.retain(|_, r| r.used.elapsed() < RENEWAL_IDLE);
            renewals.remove(&lease)?
        };
        let answer = async {
            renewal.keeper.keep_alive().await.ok()?;
            renewal.answers.message().await.ok()?
        };
        let answer = tokio::time::timeout(self.attempt_timeout, answer)
            .await
            .ok()??;
        if answer.ttl() <= 0 {
            return Some(Err(StoreError::LeaseNotFound(lease)));
        }
        renewal.used = std::time::Instant::now();
        self.keep_renewal(lease, renewal);
        Some(Ok(()))
    }

    fn keep_renewal(&self, lease: LeaseId, renewal: Renewal) {
        self.renewals().insert(lease, renewal);
    }

    /// The open keep-alive streams.
    fn renewals(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, Renewal>> {
        self.renewals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configured key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Compacts etcd's history up to `revision` (cluster-wide, like `etcdctl compact`):
    /// watches from an older revision then fail with [`StoreError::Compacted`].
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        match self
            .call(|mut m| async move { m.kv.compact(revision, None).await })
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::Rejected(reason)) if reason.contains("compacted") => {
                Err(StoreError::Compacted {
                    requested: revision,
                    compact_revision: revision,
                })
            }
            Err(StoreError::Rejected(reason)) => Err(StoreError::Config(format!(
                "cannot compact to revision {revision}: {reason}"
            ))),
            Err(e) => Err(e),
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Strips the prefix from a key etcd returned.
    fn relative_key(&self, raw: &[u8]) -> Result<String> {
        let key = std::str::from_utf8(raw).map_err(|_| StoreError::InvalidData {
            key: String::from_utf8_lossy(raw).into_owned(),
            reason: "key is not UTF-8".into(),
        })?;
        key.strip_prefix(self.prefix.as_str())
            .map(str::to_owned)
            .ok_or_else(|| StoreError::InvalidData {
                key: key.to_owned(),
                reason: format!("key lies outside the prefix {}", self.prefix),
            })
    }

    fn key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: self.relative_key(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: (kv.lease() != 0).then_some(kv.lease()),
        })
    }

    fn unavailable(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Unavailable {
            endpoints: self.endpoints.join(","),
            reason: reason.into(),
        }
    }

    /// Runs one request, made by `request` for a member, under the request timeout, on one
    /// member after another until one answers (see the module documentation), and maps its
    /// errors. Only [`StoreError::Unavailable`] is tried again; any other answer is final.
    async fn call<T, F, Fut>(&self, request: F) -> Result<T>
    where
        F: FnMut(Member) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_at(request).await.map(|answer| answer.value)
    }

    /// [`call`](Self::call) that also says which member answered and whether an earlier
    /// attempt may have been carried out.
    async fn call_at<T, F, Fut>(&self, request: F) -> Result<Answer<T>>
    where
        F: FnMut(Member) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        if self.members.len() == 1 {
            self.call_single(request).await.map(|value| Answer {
                value,
                member: 0,
                retried_unsure: false,
            })
        } else {
            self.call_members(request).await
        }
    }

    /// Several members: one attempt after another, each on the preferred member.
    async fn call_members<T, F, Fut>(&self, mut request: F) -> Result<Answer<T>>
    where
        F: FnMut(Member) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let count = self.members.len();
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut round = 0u32;
        let mut failures: Vec<String> = Vec::with_capacity(count);
        let mut last_round = String::new();
        let mut all_unreachable = true;
        let mut retried_unsure = false;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                let report = if failures.is_empty() {
                    last_round
                } else {
                    failures.join("; ")
                };
                return Err(self.unavailable(report));
            }
            let index = self.preferred.load(Ordering::Relaxed) % count;
            let member = self.members[index].clone();
            let endpoint = member.endpoint.clone();
            let limit = self
                .attempt_timeout
                .saturating_mul(1 << round.min(8))
                .min(left);
            let failure = match tokio::time::timeout(limit, request(member)).await {
                Ok(Ok(value)) => {
                    return Ok(Answer {
                        value,
                        member: index,
                        retried_unsure,
                    });
                }
                Ok(Err(error)) => {
                    let unreachable = not_connected(&error);
                    match self.map_error(error) {
                        StoreError::Unavailable { reason, .. } => AttemptFailure {
                            reason,
                            unreachable,
                        },
                        other => return Err(other),
                    }
                }
                Err(_) => AttemptFailure {
                    reason: format!("no answer within {limit:?}"),
                    unreachable: false,
                },
            };
            tracing::debug!(
                endpoint,
                reason = failure.reason,
                "etcd member failed an attempt"
            );
            self.demote(index);
            failures.push(format!("{endpoint}: {}", failure.reason));
            all_unreachable &= failure.unreachable;
            // A member that took the connection may have carried the request out before it
            // failed to answer (a timeout, a leader change after the proposal).
            retried_unsure |= !failure.unreachable;
            if failures.len() == count {
                // Every member failed once: with none taking a connection the datastore is
                // down, and waiting out the deadline would only delay saying so.
                if all_unreachable {
                    return Err(self.unavailable(failures.join("; ")));
                }
                round += 1;
                last_round = failures.join("; ");
                failures.clear();
                all_unreachable = true;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                tokio::time::sleep(ROUND_PAUSE.saturating_mul(round).min(left)).await;
            }
        }
    }

    /// Moves requests off member `index` to the next one, unless another request already did.
    fn demote(&self, index: usize) {
        let next = (index + 1) % self.members.len();
        let _ = self
            .preferred
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// One member: the request waits up to the request timeout. When no answer came within
    /// the dial timeout, the endpoint is probed: if it accepts no TCP connection the request
    /// fails now instead of waiting out the request timeout.
    async fn call_single<T, F, Fut>(&self, mut request: F) -> Result<T>
    where
        F: FnMut(Member) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = tokio::time::Instant::now();
        let request = request(self.members[0].clone());
        tokio::pin!(request);
        // One timer on the path every answered request takes; the probe only when slow.
        let first_wait = self.dial_timeout.min(self.request_timeout);
        let result = match tokio::time::timeout(first_wait, &mut request).await {
            Ok(result) => result,
            Err(_) => {
                if let Err(reason) = self.probe().await {
                    return Err(self.unavailable(reason));
                }
                let left = self.request_timeout.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, request).await {
                    Ok(result) => result,
                    Err(_) => {
                        let reason = format!("no answer within {:?}", self.request_timeout);
                        return Err(self.unavailable(reason));
                    }
                }
            }
        };
        result.map_err(|e| self.map_error(e))
    }

    /// Succeeds if the endpoint accepts a TCP connection; otherwise says why it did not.
    async fn probe(&self) -> Result<(), String> {
        let endpoint = &self.members[0].endpoint;
        let Some(addr) = host_port(endpoint) else {
            return Err(format!("{endpoint}: no host:port in the URL"));
        };
        match tokio::time::timeout(self.dial_timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("{endpoint}: {e}")),
            Err(_) => Err(format!(
                "{endpoint}: no connection within {:?}",
                self.dial_timeout
            )),
        }
    }

    fn map_error(&self, error: etcd_client::Error) -> StoreError {
        use etcd_client::Error as E;
        use tonic::Code;
        match error {
            E::GRpcStatus(status) => match status.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::Unknown
                | Code::Internal => self.unavailable(with_causes(status.message(), &status)),
                Code::Unauthenticated | Code::PermissionDenied => {
                    StoreError::Config(format!("etcd refused access: {}", status.message()))
                }
                _ => StoreError::Rejected(status.message().to_owned()),
            },
            // etcd answered, and the answer was that the lease is gone: final, not a failure
            // to reach etcd.
            E::LeaseKeepAliveError(e) if e.contains("lease not found") => StoreError::Rejected(e),
            E::InvalidArgs(e) | E::EndpointError(e) => StoreError::Config(e),
            E::InvalidUri(e) => StoreError::Config(e.to_string()),
            other => self.unavailable(with_causes(&other.to_string(), &other)),
        }
    }

    /// Runs a transaction whose failure branch reads back every compared and every written
    /// key, and on failure names the first condition that did not hold.
    ///
    /// `keep_lease` leaves each written key on the lease it has. When an earlier attempt
    /// failed without an answer and the retry finds the conditions broken, the writes are
    /// checked against what the store holds: if each is already there (the first attempt was
    /// carried out and only its answer lost) the transaction succeeded.
    async fn conditional(
        &self,
        compares: &[Compare],
        writes: &[TxnOp],
        keep_lease: bool,
    ) -> Result<Result<Revision, FailedCompare>> {
        let ops = writes
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, value, .. } if keep_lease => EtcdTxnOp::put(
                    self.full_key(key),
                    value.clone(),
                    Some(PutOptions::new().with_ignore_lease()),
                ),
                TxnOp::Put { key, value, lease } => self.put_op(key, value.clone(), *lease),
                TxnOp::Delete { key } => EtcdTxnOp::delete(self.full_key(key), None),
            })
            .collect::<Vec<_>>();
        let read_back = compares
            .iter()
            .map(Compare::key)
            .chain(writes.iter().map(TxnOp::key))
            .map(|key| EtcdTxnOp::get(self.full_key(key), None))
            .collect::<Vec<_>>();
        let txn = EtcdTxn::new()
            .when(compares.iter().map(|c| self.compare(c)).collect::<Vec<_>>())
            .and_then(ops)
            .or_else(read_back);
        let answer = self
            .call_at(|mut m| {
                let txn = txn.clone();
                async move { m.kv.txn(txn).await }
            })
            .await?;
        let response = answer.value;
        let revision = response.header().map_or(0, |h| h.revision());
        if response.succeeded() {
            return Ok(Ok(revision));
        }
        let responses = response.op_responses();
        let current: Vec<Option<&EtcdKeyValue>> = responses
            .iter()
            .map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first(),
                _ => None,
            })
            .collect();
        let (compared, written) = current.split_at(compares.len().min(current.len()));
        if answer.retried_unsure
            && written.len() == writes.len()
            && writes
                .iter()
                .zip(written)
                .all(|(op, kv)| took_effect(op, *kv, keep_lease))
        {
            let written_at = written.iter().flatten().map(|kv| kv.mod_revision()).max();
            return Ok(Ok(written_at.unwrap_or(revision)));
        }
        let failed = compares
            .iter()
            .zip(compared.iter().map(|kv| kv.map(EtcdKeyValue::mod_revision)))
            .find(|(compare, mod_revision)| !holds(compare, *mod_revision))
            .or_else(|| compares.first().map(|c| (c, None)));
        Ok(Err(match failed {
            Some((compare, mod_revision)) => FailedCompare {
                key: compare.key().to_owned(),
                exists: mod_revision.is_some(),
            },
            None => FailedCompare {
                key: String::new(),
                exists: false,
            },
        }))
    }

    fn compare(&self, compare: &Compare) -> EtcdCompare {
        let key = self.full_key(compare.key());
        match compare {
            Compare::Absent(_) => EtcdCompare::create_revision(key, CompareOp::Equal, 0),
            Compare::Present(_) => EtcdCompare::create_revision(key, CompareOp::Greater, 0),
            Compare::ModRevision(_, rev) => EtcdCompare::mod_revision(key, CompareOp::Equal, *rev),
        }
    }

    fn put_op(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> EtcdTxnOp {
        EtcdTxnOp::put(self.full_key(key), value, lease_option(lease))
    }

    /// Turns etcd's "lease not found" refusal into [`StoreError::LeaseNotFound`].
    fn lease_error(error: StoreError, lease: Option<LeaseId>) -> StoreError {
        match (error, lease) {
            (StoreError::Rejected(reason), Some(id)) if reason.contains("lease not found") => {
                StoreError::LeaseNotFound(id)
            }
            (error, _) => error,
        }
    }

    /// Waits for etcd to confirm the watch, then turns its responses into events.
    async fn open_watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from_revision.max(0));
        let key = self.full_key(prefix);
        let Answer {
            value: (stream, first),
            member,
            ..
        } = self
            .call_at(|m| {
                let (key, options) = (key.clone(), options.clone());
                async move {
                    let mut client = m
                        .client
                        .watch_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES);
                    let mut stream = client.watch(key, Some(options)).await?;
                    match stream.message().await? {
                        Some(first) => Ok((stream, first)),
                        None => Err(etcd_client::Error::WatchError(
                            "watch stream closed before it was created".into(),
                        )),
                    }
                }
            })
            .await?;
        let mut watch = EtcdWatch {
            store: self.clone(),
            member,
            stream,
            requested: from_revision,
            pending: VecDeque::new(),
            done: false,
        };
        watch.absorb(first);
        Ok(Box::pin(futures::stream::unfold(watch, EtcdWatch::next)))
    }
}

/// Which condition of a transaction failed, and whether its key exists.
struct FailedCompare {
    key: String,
    exists: bool,
}

impl FailedCompare {
    /// The error a single-key conditional write reports: gone or changed.
    fn into_error(self) -> StoreError {
        if self.exists {
            StoreError::Conflict { key: self.key }
        } else {
            StoreError::NotFound { key: self.key }
        }
    }
}

/// The condition of a single-key conditional write: the key exists, at revision `expected`
/// if given. A positive revision alone implies existence (a missing key has mod revision 0);
/// anything else needs the explicit check so that `expected == 0` cannot match a missing key.
fn existing_at(key: &str, expected: Option<Revision>) -> Vec<Compare> {
    match expected {
        Some(rev) if rev > 0 => vec![Compare::ModRevision(key.to_owned(), rev)],
        Some(rev) => vec![
            Compare::Present(key.to_owned()),
            Compare::ModRevision(key.to_owned(), rev),
        ],
        None => vec![Compare::Present(key.to_owned())],
    }
}

/// Whether the store already holds what `op` writes: `kv` is the key's current entry.
fn took_effect(op: &TxnOp, kv: Option<&EtcdKeyValue>, keep_lease: bool) -> bool {
    match (op, kv) {
        (TxnOp::Put { value, lease, .. }, Some(kv)) => {
            kv.value() == value.as_slice() && (keep_lease || kv.lease() == lease.unwrap_or(0))
        }
        (TxnOp::Put { .. }, None) => false,
        (TxnOp::Delete { .. }, kv) => kv.is_none(),
    }
}

/// Whether `compare` holds for a key whose mod revision is `mod_revision` (`None`: absent).
fn holds(compare: &Compare, mod_revision: Option<Revision>) -> bool {
    match compare {
        Compare::Absent(_) => mod_revision.is_none(),
        Compare::Present(_) => mod_revision.is_some(),
        Compare::ModRevision(_, rev) => mod_revision == Some(*rev),
    }
}

/// `message` followed by the causes of `error` ("tcp connect error: Connection refused"),
/// skipping any that repeat what is already said.
fn with_causes(message: &str, error: &dyn std::error::Error) -> String {
    let mut text = message.to_owned();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// Whether `error` says the member took no connection (refused, unreachable, timed out while
/// connecting), so the request never reached it.
fn not_connected(error: &etcd_client::Error) -> bool {
    use std::io::ErrorKind;
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        if e.to_string().contains("connect error") {
            return true;
        }
        cause = e.source();
    }
    false
}

fn lease_option(lease: Option<LeaseId>) -> Option<PutOptions> {
    lease.map(|id| PutOptions::new().with_lease(id))
}

/// `host:port` of an endpoint URL (`https://10.0.0.1:2379` → `10.0.0.1:2379`).
fn host_port(endpoint: &str) -> Option<String> {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    (!authority.is_empty() && authority.contains(':')).then(|| authority.to_owned())
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| StoreError::Config(format!("cannot read {what} {}: {e}", path.display())))
}

fn tls_options(config: &EtcdConfig) -> Result<Option<TlsOptions>> {
    let identity = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => Some(Identity::from_pem(
            read_pem("client certificate", cert)?,
            read_pem("client key", key)?,
        )),
        (None, None) => None,
        _ => {
            return Err(StoreError::Config(
                "a client certificate needs its key and the key its certificate".into(),
            ));
        }
    };
    if config.ca.is_none() && identity.is_none() {
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read_pem("CA certificate", ca)?));
    }
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Ok(Some(tls))
}

/// State of one etcd watch stream.
struct EtcdWatch {
    store: EtcdStore,
    /// The member serving the watch: when the stream breaks, requests move off it too.
    member: usize,
    /// Kept so the request half stays open: etcd ends a watch whose client stops sending.
    stream: etcd_client::WatchStream,
    requested: Revision,
    pending: VecDeque<Result<WatchEvent>>,
    done: bool,
}

impl EtcdWatch {
    /// Queues the events (or the terminal error) one response carries.
    fn absorb(&mut self, response: etcd_client::WatchResponse) {
        if response.compact_revision() != 0 {
            self.fail(StoreError::Compacted {
                requested: self.requested,
                compact_revision: response.compact_revision(),
            });
            return;
        }
        if response.canceled() {
            // A member that lost its leader cancels its watches: move off it.
            self.store.demote(self.member);
            let reason = format!("etcd cancelled the watch: {}", response.cancel_reason());
            self.fail(self.store.unavailable(reason));
            return;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            // A delete's tombstone has version 0; every put has version 1 or more. Reading
            // the type from the version avoids trusting an event type the client would
            // panic on if etcd ever sent one it does not know.
            let mapped = if kv.version() == 0 {
                self.store
                    .relative_key(kv.key())
                    .map(|key| WatchEvent::Delete {
                        key,
                        revision: kv.mod_revision(),
                    })
            } else {
                self.store.key_value(kv).map(WatchEvent::Put)
            };
            self.pending.push_back(mapped);
        }
    }

    fn fail(&mut self, error: StoreError) {
        self.pending.push_back(Err(error));
        self.done = true;
    }

    async fn next(mut self) -> Option<(Result<WatchEvent>, Self)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some((item, self));
            }
            if self.done {
                return None;
            }
            match self.stream.message().await {
                Ok(Some(response)) => self.absorb(response),
                Ok(None) => {
                    self.store.demote(self.member);
                    let error = self.store.unavailable("etcd closed the watch stream");
                    self.fail(error);
                }
                Err(e) => {
                    self.store.demote(self.member);
                    let error = self.store.map_error(e);
                    self.fail(error);
                }
            }
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = self.full_key(key);
        let response = self
            .call(|mut m| {
                let key = key.clone();
                async move { m.kv.get(key, None).await }
            })
            .await?;
        response
            .kvs()
            .first()
            .map(|kv| self.key_value(kv))
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let prefix = self.full_key(prefix);
        let response = self
            .call(|mut m| {
                let prefix = prefix.clone();
                async move {
                    m.kv.get(prefix, Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        let items = response
            .kvs()
            .iter()
            .map(|kv| self.key_value(kv))
            .collect::<Result<_>>()?;
        Ok(Listing {
            items,
            revision: response.header().map_or(0, |h| h.revision()),
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        let compare = [Compare::Absent(key.to_owned())];
        let put = TxnOp::Put {
            key: key.to_owned(),
            value,
            lease,
        };
        match self.conditional(&compare, &[put], false).await {
            Ok(Ok(revision)) => Ok(revision),
            Ok(Err(failed)) => Err(StoreError::Conflict { key: failed.key }),
            Err(e) => Err(Self::lease_error(e, lease)),
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        let key = self.full_key(key);
        let response = self
            .call(|mut m| {
                let (key, value) = (key.clone(), value.clone());
                async move { m.kv.put(key, value, lease_option(lease)).await }
            })
            .await
            .map_err(|e| Self::lease_error(e, lease))?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        let compares = existing_at(key, Some(expected));
        let put = TxnOp::Put {
            key: key.to_owned(),
            value,
            lease: None,
        };
        // The key keeps its lease, as it does in the memory backend.
        self.conditional(&compares, &[put], true)
            .await?
            .map_err(FailedCompare::into_error)
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Revision> {
        let compares = existing_at(key, expected);
        let delete = TxnOp::Delete {
            key: key.to_owned(),
        };
        self.conditional(&compares, &[delete], false)
            .await?
            .map_err(FailedCompare::into_error)
    }

    async fn txn(&self, txn: Txn) -> Result<Revision> {
        crate::validate_txn(&txn)?;
        let first_lease = txn.ops.iter().find_map(|op| match op {
            TxnOp::Put { lease, .. } => *lease,
            TxnOp::Delete { .. } => None,
        });
        match self.conditional(&txn.compares, &txn.ops, false).await {
            Ok(Ok(revision)) => Ok(revision),
            Ok(Err(failed)) => Err(StoreError::Conflict { key: failed.key }),
            Err(e) => Err(Self::lease_error(e, first_lease)),
        }
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        self.open_watch(prefix, from_revision).await
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId> {
        let response = self
            .call(|m| async move { m.client.lease_client().grant(ttl_secs.max(1), None).await })
            .await?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        if let Some(renewed) = self.renew_on_open_stream(lease).await {
            return renewed;
        }
        // Opening the stream renews the lease once (the client waits for that first answer).
        let (keeper, answers) = self
            .call(|m| async move { m.client.lease_client().keep_alive(lease).await })
            .await
            .map_err(|e| Self::lease_error(e, Some(lease)))?;
        let used = std::time::Instant::now();
        self.keep_renewal(
            lease,
            Renewal {
                keeper,
                answers,
                used,
            },
        );
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.renewals().remove(&lease);
        self.call(|m| async move { m.client.lease_client().revoke(lease).await })
            .await
            .map(|_| ())
            .map_err(|e| Self::lease_error(e, Some(lease)))
    }

    async fn revision(&self) -> Result<Revision> {
        let response = self
            .call(|mut m| {
                let prefix = self.prefix.clone();
                async move {
                    m.kv.get(prefix, Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_comes_from_the_url_authority() {
        assert_eq!(
            host_port("https://10.0.0.1:2379").as_deref(),
            Some("10.0.0.1:2379")
        );
        assert_eq!(
            host_port("http://[::1]:2379/").as_deref(),
            Some("[::1]:2379")
        );
        assert_eq!(
            host_port("127.0.0.1:2379").as_deref(),
            Some("127.0.0.1:2379")
        );
        assert_eq!(host_port("http://etcd"), None);
    }

    #[tokio::test]
    async fn a_certificate_without_its_key_is_a_configuration_error() {
        let config = EtcdConfig {
            cert: Some("/nonexistent/cert.pem".into()),
            ..EtcdConfig::default()
        };
        assert!(matches!(
            EtcdStore::connect(config).await,
            Err(StoreError::Config(_))
        ));
    }

    #[tokio::test]
    async fn an_unreadable_ca_names_the_file() {
        let config = EtcdConfig {
            ca: Some("/nonexistent/ca.pem".into()),
            ..EtcdConfig::default()
        };
        match EtcdStore::connect(config).await {
            Err(StoreError::Config(msg)) => assert!(msg.contains("/nonexistent/ca.pem"), "{msg}"),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
}
