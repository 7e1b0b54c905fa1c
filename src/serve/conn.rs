//! One client connection of the tail server: its bounded input and output
//! buffers, the body being sent (bytes, a file in pieces, or an event stream),
//! and its timers (header, idle, stalled writer, heartbeat). Non-blocking I/O on
//! a mio socket; the server decides what to do when the buffers drain.

use super::follow::Follower;
use super::http::{self, MAX_HEAD};
use super::routes::{Body, Produce, Response};
use super::sse;
use super::ServeConfig;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::time::Instant;

/// Bytes of a file body read per refill: a few socket buffers' worth, so a
/// download costs few reads, and the same as the follower bound below.
pub const FILE_PIECE: usize = 64 * 1024;

/// A follower's output bound: events are produced only while less than this is
/// waiting to be sent, so a follower that stops reading pauses its cursor and
/// costs at most this plus one event (back-pressure, SPEC §5).
pub const SSE_HIGH_WATER: usize = 64 * 1024;

/// An output buffer that grew past this is given back once sent, so a burst
/// does not pin memory on a thousand idle followers.
const KEEP_CAPACITY: usize = 16 * 1024;

/// What is sent after the head and the bytes already in the output buffer.
pub enum Source {
    /// Nothing more: the response is complete once the buffer is sent.
    Nothing,
    File {
        file: Box<dyn crate::store::RawLog>,
        pos: u64,
        end: u64,
    },
    Events(Box<Follower>),
    /// The job events stream: the server queues its events.
    Feed,
    /// A body made as the client reads it.
    Stream(Box<dyn Produce>),
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Sending a response.
    Body,
}

/// What a timer that fired asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The request head did not arrive in time: 408, then close.
    HeaderTimeout,
    /// A kept-alive connection was idle too long, or a client stopped reading
    /// what it asked for: close.
    Close,
    /// A silent event stream: send a heartbeat comment.
    Heartbeat,
    /// An event stream's line in progress is due to be looked at again.
    Partial,
}

pub struct Conn {
    pub sock: TcpStream,
    pub inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    pub source: Source,
    pub phase: Phase,
    /// Close once the output is sent (no keep-alive, an error, EOF from the client).
    pub close_after: bool,
    /// Requests answered on this connection.
    pub served: u32,
    /// When the current phase started (head deadline, keep-alive idle).
    since: Instant,
    /// Last time bytes went out, or output was queued on an empty buffer.
    last_progress: Instant,
    /// Readiness seen and not yet consumed to WouldBlock (mio is edge-triggered).
    pub read_ready: bool,
    pub write_ready: bool,
    /// Over the connection cap: answer the first request with 503.
    pub over_cap: bool,
    /// The last turn ended on the turn budget with more to send.
    pub more: bool,
    /// Waiting in the server's list of connections to drive on the next tick.
    pub deferred: bool,
}

/// How a read went.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStatus {
    Open,
    /// The client closed its side (or the socket failed).
    Closed,
}

impl Conn {
    pub fn new(sock: TcpStream, now: Instant, over_cap: bool) -> Conn {
        Conn {
            sock,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            source: Source::Nothing,
            phase: Phase::Head,
            close_after: false,
            served: 0,
            since: now,
            last_progress: now,
            read_ready: true,
            write_ready: true,
            over_cap,
            more: false,
            deferred: false,
        }
    }

    pub fn follower(&mut self) -> Option<&mut Follower> {
        match &mut self.source {
            Source::Events(f) => Some(f),
            _ => None,
        }
    }

    /// True while an event stream is sent: the client has nothing more to
    /// say, and a silence gets a heartbeat.
    pub fn streaming(&self) -> bool {
        matches!(self.source, Source::Events(_) | Source::Feed)
    }

    /// Bytes queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Reads what the socket has. While a head is expected, bytes are kept (at
    /// most [`MAX_HEAD`]; reading pauses when that is full); while an event
    /// stream is sent, the client has nothing to say and bytes are dropped.
    pub fn read(&mut self) -> ReadStatus {
        let mut chunk = [0u8; 4096];
        while self.read_ready {
            let streaming = self.streaming();
            let room = if streaming {
                chunk.len()
            } else {
                MAX_HEAD.saturating_sub(self.inbuf.len()).min(chunk.len())
            };
            if room == 0 {
                return ReadStatus::Open;
            }
            match self.sock.read(&mut chunk[..room]) {
                Ok(0) => return ReadStatus::Closed,
                Ok(n) if !streaming => {
                    if self.inbuf.is_empty() && self.served > 0 && matches!(self.phase, Phase::Head)
                    {
                        // The first byte of the next request on a kept-alive
                        // connection: its head has the header timeout from
                        // now, not from the end of the last response (the
                        // idle wait before it had the idle timeout).
                        self.since = Instant::now();
                    }
                    self.inbuf.extend_from_slice(&chunk[..n]);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.read_ready = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadStatus::Closed,
            }
        }
        ReadStatus::Open
    }

    /// Sends what is queued until done or the socket is full. `Err` means the
    /// client is gone.
    pub fn flush(&mut self, now: Instant) -> io::Result<()> {
        while self.out_pos < self.out.len() && self.write_ready {
            match self.sock.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out_pos += n;
                    self.last_progress = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.write_ready = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > KEEP_CAPACITY {
                self.out.shrink_to(KEEP_CAPACITY);
            }
        }
        Ok(())
    }

    /// Lets `fill` append to the output buffer (events, heartbeats, a head).
    /// Waiting on an empty buffer is not the client's fault, so the stall clock
    /// starts when something is queued on it; a fill that adds nothing leaves
    /// the clock alone, so a follower woken with nothing new still gets its
    /// heartbeat after a silence (SPEC §5).
    pub fn fill<R>(&mut self, now: Instant, fill: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let (was_empty, before) = (self.pending() == 0, self.out.len());
        let r = fill(&mut self.out);
        if was_empty && self.out.len() > before {
            self.last_progress = now;
        }
        r
    }

    /// The server is still making a body and has nothing queued yet (a
    /// search counting matches past its page): that time is not the
    /// client's, so the idle clock starts again from `now`.
    pub fn producing(&mut self, now: Instant) {
        if self.pending() == 0 {
            self.last_progress = now;
        }
    }

    /// Queues a response: the head now, the body as the client reads.
    pub fn respond(&mut self, resp: Response, head_only: bool, keep_alive: bool, now: Instant) {
        let length = match &resp.body {
            Body::Bytes(b) => Some(b.len() as u64),
            Body::File { len, .. } => Some(*len),
            Body::Events(_) | Body::Feed | Body::Stream(_) | Body::Nothing => None,
        };
        let keep_alive = keep_alive && length.is_some() && !self.close_after;
        let headers: Vec<(&str, &str)> =
            resp.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let head = http::response_head(resp.status, &headers, length, keep_alive);
        self.fill(now, |out| out.extend_from_slice(&head));
        self.close_after = !keep_alive;
        self.source = Source::Nothing;
        if !head_only {
            match resp.body {
                Body::Bytes(b) => self.out.extend_from_slice(&b),
                Body::File { file, start, len } => {
                    self.source = Source::File {
                        file,
                        pos: start,
                        end: start + len,
                    }
                }
                Body::Events(f) => {
                    self.out.extend_from_slice(sse::stream_start().as_bytes());
                    self.source = Source::Events(f);
                }
                Body::Feed => {
                    self.out.extend_from_slice(sse::stream_start().as_bytes());
                    self.source = Source::Feed;
                }
                Body::Stream(p) => self.source = Source::Stream(p),
                Body::Nothing => {}
            }
        }
        self.phase = Phase::Body;
        self.since = now;
        self.served += 1;
    }

    /// Refills the buffer from a file body; false when the file ended early
    /// (it cannot have: logs only grow; the connection is closed then).
    pub fn refill_file(&mut self, now: Instant) -> bool {
        if self.pending() == 0 {
            self.last_progress = now;
        }
        let Source::File { file, pos, end } = &mut self.source else {
            return true;
        };
        let want = ((*end - *pos) as usize).min(FILE_PIECE);
        if want == 0 {
            self.source = Source::Nothing;
            return true;
        }
        let at = self.out.len();
        self.out.resize(at + want, 0);
        match file.read_at(&mut self.out[at..], *pos) {
            Ok(n) if n > 0 => {
                self.out.truncate(at + n);
                *pos += n as u64;
                true
            }
            _ => {
                self.out.truncate(at);
                false
            }
        }
    }

    /// The response has been sent: wait for the next request on this connection.
    pub fn next_request(&mut self, now: Instant) {
        self.phase = Phase::Head;
        self.source = Source::Nothing;
        self.since = now;
    }

    /// The next timer of this connection and what it asks for.
    pub fn timer(&self, cfg: &ServeConfig) -> (Instant, Timer) {
        let (header_timeout, idle_timeout) = (cfg.header_timeout, cfg.idle_timeout);
        match self.phase {
            Phase::Head if self.inbuf.is_empty() && self.served > 0 => {
                (self.since + idle_timeout, Timer::Close)
            }
            Phase::Head => (self.since + header_timeout, Timer::HeaderTimeout),
            Phase::Body if self.pending() == 0 && self.streaming() => {
                let heartbeat = self.last_progress + cfg.heartbeat;
                match &self.source {
                    Source::Events(f) => match f.partial_due() {
                        Some(at) if at < heartbeat => (at, Timer::Partial),
                        _ => (heartbeat, Timer::Heartbeat),
                    },
                    _ => (heartbeat, Timer::Heartbeat),
                }
            }
            Phase::Body => (self.last_progress + idle_timeout, Timer::Close),
        }
    }

    /// Queues a heartbeat comment.
    pub fn heartbeat(&mut self, now: Instant) {
        self.fill(now, |out| out.extend_from_slice(sse::HEARTBEAT));
    }
}
