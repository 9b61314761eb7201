//! One TCP connection to a peer: a reader task that frames and parses what arrives, and a
//! writer task that sends what the session hands it and drains the peer's Adj-RIB-Out.
//!
//! Reading and writing are separate tasks so that a peer that is slow to read never stops us
//! from reading (the classic deadlock of two speakers both blocked sending full tables).
//! Reading is backpressured: a full event channel stops the reader, which stops TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::task::{AbortHandle, JoinHandle};

use crate::fsm::ConnId;
use crate::rib::AdjRibOut;
use crate::wire::{Codec, Message, ParsedMessage, WireError, frame, parse_message};

/// Prefixes taken from the Adj-RIB-Out per write; between two batches the writer looks at its
/// commands, so a NOTIFICATION never waits behind a whole table.
const BATCH_PREFIXES: usize = 4096;

/// Most messages handed to the session at once, to bound what waits parsed in its queue.
const MAX_BATCH: usize = 256;

/// What a connection reports to its session.
#[derive(Debug)]
// Moved through a channel once, never stored.
#[allow(clippy::large_enum_variant)]
pub(super) enum ConnEvent {
    /// An outgoing connection attempt finished.
    Connected(ConnId, std::io::Result<TcpStream>),
    /// Messages arrived, in order, as many as one read delivered whole; the last may be an
    /// error (a message that could not be parsed: the session must end).
    Messages(ConnId, Vec<Result<ParsedMessage, WireError>>),
    /// The peer closed the connection or it failed.
    Closed(ConnId),
}

/// What a session asks of a connection's writer.
#[derive(Debug)]
// Moved through a channel once, never stored.
#[allow(clippy::large_enum_variant)]
pub(super) enum WriterCmd {
    /// Send one message.
    Send(Message),
    /// The session is established: drain the Adj-RIB-Out of this session generation.
    Established { epoch: u64, codec: Codec },
    /// Send what is queued, then close.
    Close,
}

/// The session's side of a connection.
#[derive(Debug)]
pub(super) struct Connection {
    /// Our address on the connection (the next hop "self").
    pub local: SocketAddr,
    writer: mpsc::UnboundedSender<WriterCmd>,
    writer_task: Option<JoinHandle<()>>,
    reader: Option<AbortHandle>,
    codec: Arc<SharedCodec>,
}

/// The session's [`Codec`], set by the session task once the OPENs are in and read by the
/// reader for every message.
#[derive(Debug)]
struct SharedCodec {
    four_octet_as: AtomicBool,
    external_peer: AtomicBool,
}

impl SharedCodec {
    fn load(&self) -> Codec {
        Codec {
            four_octet_as: self.four_octet_as.load(Ordering::Acquire),
            external_peer: self.external_peer.load(Ordering::Acquire),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The writer ends when its command channel closes; the reader may be parked on a
        // silent socket.
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

impl Connection {
    /// Starts the reader and writer tasks of a connected stream.
    pub fn spawn(
        id: ConnId,
        stream: TcpStream,
        events: mpsc::Sender<ConnEvent>,
        adj_out: AdjRibOut,
        notify: Arc<Notify>,
    ) -> std::io::Result<Self> {
        let local = stream.local_addr()?;
        let (read, write) = stream.into_split();
        let initial = Codec::default();
        let codec = Arc::new(SharedCodec {
            four_octet_as: AtomicBool::new(initial.four_octet_as),
            external_peer: AtomicBool::new(initial.external_peer),
        });
        let reader = tokio::spawn(read_loop(id, read, events, codec.clone()));
        let (writer, commands) = mpsc::unbounded_channel();
        let writer_task = tokio::spawn(write_loop(write, commands, adj_out, notify));
        Ok(Self {
            local,
            writer,
            writer_task: Some(writer_task),
            reader: Some(reader.abort_handle()),
            codec,
        })
    }

    /// Queues a message.
    pub fn send(&self, message: Message) {
        // A writer that has exited has lost its connection; the reader reports that.
        let _ = self.writer.send(WriterCmd::Send(message));
    }

    /// Sets how UPDATEs are parsed from now on (known once the OPENs are exchanged).
    pub fn set_codec(&self, codec: Codec) {
        self.codec
            .four_octet_as
            .store(codec.four_octet_as, Ordering::Release);
        self.codec
            .external_peer
            .store(codec.external_peer, Ordering::Release);
    }

    /// Starts draining the Adj-RIB-Out.
    pub fn established(&self, epoch: u64, codec: Codec) {
        let _ = self.writer.send(WriterCmd::Established { epoch, codec });
    }

    /// Sends what is queued and closes; the returned task ends when the socket is closed.
    pub fn close(mut self) -> JoinHandle<()> {
        let _ = self.writer.send(WriterCmd::Close);
        let writer = self.writer_task.take();
        let reader = self.reader.take();
        tokio::spawn(async move {
            if let Some(writer) = writer {
                let _ = writer.await;
            }
            // Reading stops only once the NOTIFICATION is out: closing a socket with unread
            // data resets it at once.
            if let Some(reader) = reader {
                reader.abort();
            }
        })
    }
}

async fn read_loop(
    id: ConnId,
    mut read: OwnedReadHalf,
    events: mpsc::Sender<ConnEvent>,
    codec: Arc<SharedCodec>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        // Everything whole in the buffer goes to the session in one message: a full table
        // arrives as a few hundred UPDATEs per read, and a message each would cost a task
        // wake-up each.
        let mut batch = Vec::new();
        let mut fatal = false;
        while !fatal && batch.len() < MAX_BATCH {
            let parsed = match frame(&buf) {
                Ok(Some(len)) => {
                    let parsed = parse_message(&buf[..len], &codec.load());
                    buf.advance(len);
                    parsed
                }
                Ok(None) => break,
                Err(error) => Err(error),
            };
            fatal = parsed.is_err();
            batch.push(parsed);
        }
        let full = batch.len() == MAX_BATCH;
        if !batch.is_empty() && events.send(ConnEvent::Messages(id, batch)).await.is_err() {
            return;
        }
        if fatal {
            return;
        }
        if full {
            continue;
        }
        match read.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            _ => {
                let _ = events.send(ConnEvent::Closed(id)).await;
                return;
            }
        }
    }
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut commands: mpsc::UnboundedReceiver<WriterCmd>,
    adj_out: AdjRibOut,
    notify: Arc<Notify>,
) {
    let mut session: Option<(u64, Codec)> = None;
    loop {
        let drain = tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(WriterCmd::Send(message)) => {
                    let codec = session.map(|(_, c)| c).unwrap_or_default();
                    match message.encode(&codec) {
                        Ok(bytes) => {
                            if write.write_all(&bytes).await.is_err() {
                                break;
                            }
                        }
                        Err(error) => tracing::warn!(%error, "cannot encode message"),
                    }
                    false
                }
                Some(WriterCmd::Established { epoch, codec }) => {
                    session = Some((epoch, codec));
                    true
                }
                Some(WriterCmd::Close) | None => {
                    let _ = write.shutdown().await;
                    break;
                }
            },
            _ = notify.notified(), if session.is_some() => true,
        };
        if let (true, Some((epoch, codec))) = (drain, session) {
            let Some((batch, more)) = adj_out.take_for(epoch, BATCH_PREFIXES) else {
                continue;
            };
            if more {
                // Come back for the rest after looking at the commands.
                notify.notify_one();
            }
            if batch.is_empty() {
                continue;
            }
            let bytes: Vec<u8> = batch.encode(&codec).concat();
            if write.write_all(&bytes).await.is_err() {
                break;
            }
        }
    }
}
