//! Fleet-wide counters, updated lock-free by every modem task.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Counters shared by the modems of a fleet (or by a single modem).
#[derive(Debug)]
pub struct Counters {
    started: Instant,
    target: u64,
    all_connected_micros: AtomicU64,
    /// Modems connected and subscribed right now.
    pub connected: AtomicU64,
    /// Modems that have been connected and subscribed at least once.
    pub ever_connected: AtomicU64,
    /// Successful connections (CONNACK and SUBACK), first ones included.
    pub connections: AtomicU64,
    /// Successful connections after a modem's first.
    pub reconnects: AtomicU64,
    /// Connection attempts that failed (TCP, TLS, CONNACK refused, timeout).
    pub connect_failures: AtomicU64,
    /// Established connections that ended (error, drop switch, broker close, reboot).
    pub disconnects: AtomicU64,
    /// Reboots (a reboot command answered `OK`, the connection dropped for it).
    pub reboots: AtomicU64,
    /// Commands received on command topics.
    pub commands_received: AtomicU64,
    /// Replies handed to the MQTT client (OK and error answers alike).
    pub replies_sent: AtomicU64,
    /// Replies whose final result was an error (`ERROR`, `+CME ERROR`, ...).
    pub error_replies: AtomicU64,
    /// Replies or status messages dropped because a queue was full.
    pub dropped: AtomicU64,
    /// Status messages handed to the MQTT client.
    pub status_sent: AtomicU64,
    /// TEMPORALCLIENT tunnels established (TCP and TLS up).
    pub tunnels_opened: AtomicU64,
    /// TEMPORALCLIENT commands accepted (`OK`) whose tunnel could not be established
    /// (TCP, TLS, timeout, no TLS identity, or the modem stopped while connecting).
    pub tunnel_failures: AtomicU64,
    /// TEMPORALCLIENT commands refused with `ERROR` because a tunnel was in progress.
    pub tunnels_busy: AtomicU64,
    /// Tunnels open right now.
    pub tunnels_active: AtomicU64,
    /// Bytes relayed from the serial side (meter) to the reading platform; the
    /// `MTX_IDClient` string is not included.
    pub tunnel_bytes_up: AtomicU64,
    /// Bytes relayed from the reading platform to the serial side (meter).
    pub tunnel_bytes_down: AtomicU64,
    /// Tunnels that ended because the reading platform closed (`peer_closed`).
    pub tunnel_closed_peer: AtomicU64,
    /// Tunnels closed after their timeout without traffic (`idle_timeout`).
    pub tunnel_closed_idle: AtomicU64,
    /// Tunnels closed because the modem stopped (`stopped`).
    pub tunnel_closed_stopped: AtomicU64,
    /// Tunnels ended by an I/O error or a serial side that could not be opened
    /// (`error`).
    pub tunnel_closed_error: AtomicU64,
    /// Tunnels ended because the serial side ended (a TCP meter closed, a device
    /// went away: `serial_closed`).
    pub tunnel_closed_serial: AtomicU64,
    /// Firmware downloads started (an image, or an OTAP JAR), whatever their end.
    pub downloads_started: AtomicU64,
    /// Firmware bytes received (images and JARs, every request counted).
    pub download_bytes: AtomicU64,
    /// Download requests resumed with `Range` that the server answered `206`.
    pub download_resumes: AtomicU64,
    /// Downloads the server refused with HTTP 4xx (given up at once, not reported).
    pub downloads_refused: AtomicU64,
    /// Firmware installed: modems that restarted onto a new version.
    pub installs: AtomicU64,
    /// Install statuses (JSR-118 notify POSTs) the server accepted with a 2xx.
    pub notifies_sent: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterSnapshot {
    /// See [`Counters::connected`].
    pub connected: u64,
    /// See [`Counters::ever_connected`].
    pub ever_connected: u64,
    /// See [`Counters::connections`].
    pub connections: u64,
    /// See [`Counters::reconnects`].
    pub reconnects: u64,
    /// See [`Counters::connect_failures`].
    pub connect_failures: u64,
    /// See [`Counters::disconnects`].
    pub disconnects: u64,
    /// See [`Counters::reboots`].
    pub reboots: u64,
    /// See [`Counters::commands_received`].
    pub commands_received: u64,
    /// See [`Counters::replies_sent`].
    pub replies_sent: u64,
    /// See [`Counters::error_replies`].
    pub error_replies: u64,
    /// See [`Counters::dropped`].
    pub dropped: u64,
    /// See [`Counters::status_sent`].
    pub status_sent: u64,
    /// See [`Counters::tunnels_opened`].
    pub tunnels_opened: u64,
    /// See [`Counters::tunnel_failures`].
    pub tunnel_failures: u64,
    /// See [`Counters::tunnels_busy`].
    pub tunnels_busy: u64,
    /// See [`Counters::tunnels_active`].
    pub tunnels_active: u64,
    /// See [`Counters::tunnel_bytes_up`].
    pub tunnel_bytes_up: u64,
    /// See [`Counters::tunnel_bytes_down`].
    pub tunnel_bytes_down: u64,
    /// See [`Counters::tunnel_closed_peer`].
    pub tunnel_closed_peer: u64,
    /// See [`Counters::tunnel_closed_idle`].
    pub tunnel_closed_idle: u64,
    /// See [`Counters::tunnel_closed_stopped`].
    pub tunnel_closed_stopped: u64,
    /// See [`Counters::tunnel_closed_error`].
    pub tunnel_closed_error: u64,
    /// See [`Counters::tunnel_closed_serial`].
    pub tunnel_closed_serial: u64,
    /// See [`Counters::downloads_started`].
    pub downloads_started: u64,
    /// See [`Counters::download_bytes`].
    pub download_bytes: u64,
    /// See [`Counters::download_resumes`].
    pub download_resumes: u64,
    /// See [`Counters::downloads_refused`].
    pub downloads_refused: u64,
    /// See [`Counters::installs`].
    pub installs: u64,
    /// See [`Counters::notifies_sent`].
    pub notifies_sent: u64,
}

impl CounterSnapshot {
    /// Tunnels that have ended, whatever the reason.
    pub fn tunnels_closed(&self) -> u64 {
        self.tunnel_closed_peer
            + self.tunnel_closed_idle
            + self.tunnel_closed_stopped
            + self.tunnel_closed_error
            + self.tunnel_closed_serial
    }
}

impl Counters {
    /// Counters for a fleet of `target` modems, timed from now.
    pub fn new(target: u64) -> Self {
        Self {
            started: Instant::now(),
            target,
            all_connected_micros: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            ever_connected: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            reboots: AtomicU64::new(0),
            commands_received: AtomicU64::new(0),
            replies_sent: AtomicU64::new(0),
            error_replies: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            status_sent: AtomicU64::new(0),
            tunnels_opened: AtomicU64::new(0),
            tunnel_failures: AtomicU64::new(0),
            tunnels_busy: AtomicU64::new(0),
            tunnels_active: AtomicU64::new(0),
            tunnel_bytes_up: AtomicU64::new(0),
            tunnel_bytes_down: AtomicU64::new(0),
            tunnel_closed_peer: AtomicU64::new(0),
            tunnel_closed_idle: AtomicU64::new(0),
            tunnel_closed_stopped: AtomicU64::new(0),
            tunnel_closed_error: AtomicU64::new(0),
            tunnel_closed_serial: AtomicU64::new(0),
            downloads_started: AtomicU64::new(0),
            download_bytes: AtomicU64::new(0),
            download_resumes: AtomicU64::new(0),
            downloads_refused: AtomicU64::new(0),
            installs: AtomicU64::new(0),
            notifies_sent: AtomicU64::new(0),
        }
    }

    /// The number of modems the fleet was started with.
    pub fn target(&self) -> u64 {
        self.target
    }

    /// Time since the counters were created.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Time from creation until every modem had connected once, if that happened.
    pub fn time_to_all_connected(&self) -> Option<Duration> {
        match self.all_connected_micros.load(Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub(crate) fn on_connected(&self, first: bool) {
        self.connected.fetch_add(1, Relaxed);
        self.connections.fetch_add(1, Relaxed);
        if first {
            let n = self.ever_connected.fetch_add(1, Relaxed) + 1;
            if n == self.target {
                let us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.all_connected_micros.store(us.max(1), Relaxed);
            }
        } else {
            self.reconnects.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn on_disconnected(&self) {
        self.connected.fetch_sub(1, Relaxed);
        self.disconnects.fetch_add(1, Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Tunnels that have ended, whatever the reason.
    pub fn tunnels_closed(&self) -> u64 {
        self.snapshot().tunnels_closed()
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            connected: self.connected.load(Relaxed),
            ever_connected: self.ever_connected.load(Relaxed),
            connections: self.connections.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            disconnects: self.disconnects.load(Relaxed),
            reboots: self.reboots.load(Relaxed),
            commands_received: self.commands_received.load(Relaxed),
            replies_sent: self.replies_sent.load(Relaxed),
            error_replies: self.error_replies.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            status_sent: self.status_sent.load(Relaxed),
            tunnels_opened: self.tunnels_opened.load(Relaxed),
            tunnel_failures: self.tunnel_failures.load(Relaxed),
            tunnels_busy: self.tunnels_busy.load(Relaxed),
            tunnels_active: self.tunnels_active.load(Relaxed),
            tunnel_bytes_up: self.tunnel_bytes_up.load(Relaxed),
            tunnel_bytes_down: self.tunnel_bytes_down.load(Relaxed),
            tunnel_closed_peer: self.tunnel_closed_peer.load(Relaxed),
            tunnel_closed_idle: self.tunnel_closed_idle.load(Relaxed),
            tunnel_closed_stopped: self.tunnel_closed_stopped.load(Relaxed),
            tunnel_closed_error: self.tunnel_closed_error.load(Relaxed),
            tunnel_closed_serial: self.tunnel_closed_serial.load(Relaxed),
            downloads_started: self.downloads_started.load(Relaxed),
            download_bytes: self.download_bytes.load(Relaxed),
            download_resumes: self.download_resumes.load(Relaxed),
            downloads_refused: self.downloads_refused.load(Relaxed),
            installs: self.installs.load(Relaxed),
            notifies_sent: self.notifies_sent.load(Relaxed),
        }
    }
}
