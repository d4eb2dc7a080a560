//! A fleet of simulated modems with consecutive IMEIs.

use std::sync::Arc;
use std::time::Duration;

use callhome_core::Imei;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::SimError;
use crate::counters::Counters;
use crate::modem::{Behaviour, ModemHandle, ModemSettings, SimModem, Transport};
use crate::tls::{Credentials, TlsBase};

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The first modem's IMEI body (14 digits); the others follow it (the check digit
    /// is computed for each).
    pub first_imei_body: String,
    /// Number of modems.
    pub count: usize,
    /// Connection attempts (TCP + TLS + CONNACK) in progress at once, fleet-wide.
    pub connect_concurrency: usize,
    /// Settings shared by all modems.
    pub settings: Arc<ModemSettings>,
    /// Behaviour of the well-behaved modems.
    pub behaviour: Behaviour,
    /// A fraction (0.0-1.0) of the fleet, spread evenly, that starts with another
    /// behaviour instead.
    pub misbehaviour: Option<(Behaviour, f64)>,
    /// Models (`MTX_model`) given to the modems in turn: modem `i` gets
    /// `models[i % models.len()]`. Empty: the master configuration's.
    pub models: Vec<String>,
    /// The enrolment cache the credentials came from ([`crate::Enroller`]'s directory):
    /// a certificate rotation writes the modem's new key and certificate there.
    pub credential_cache: Option<std::path::PathBuf>,
}

impl FleetConfig {
    /// `count` well-behaved modems from `first_imei_body`, 32 connecting at a time.
    pub fn new(first_imei_body: &str, count: usize, settings: ModemSettings) -> Self {
        Self {
            first_imei_body: first_imei_body.to_owned(),
            count,
            connect_concurrency: 32,
            settings: Arc::new(settings),
            behaviour: Behaviour::default(),
            misbehaviour: None,
            models: Vec::new(),
            credential_cache: None,
        }
    }
}

/// How the modems of a fleet connect.
#[derive(Debug, Clone)]
pub enum FleetTransport {
    /// Plain TCP, no certificates.
    Plain,
    /// Mutual TLS: one shared CA configuration and, for each modem in order, its key
    /// and certificate.
    MutualTls {
        /// The shared CA configuration.
        base: TlsBase,
        /// One per modem, in IMEI order.
        credentials: Vec<Credentials>,
    },
}

/// The IMEIs of `count` modems starting at `first_body` (14 digits).
pub fn fleet_imeis(first_body: &str, count: usize) -> Result<Vec<Imei>, SimError> {
    let start: u64 = first_body
        .parse()
        .ok()
        .filter(|_| first_body.len() == 14 && first_body.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| SimError::Invalid("the first IMEI body must be 14 digits".into()))?;
    let count_u64 = u64::try_from(count).unwrap_or(u64::MAX);
    if start.saturating_add(count_u64) > 100_000_000_000_000 {
        return Err(SimError::Invalid(
            "the fleet runs past the largest 14-digit IMEI body".into(),
        ));
    }
    (0..count_u64)
        .map(|i| {
            Imei::from_body(&format!("{:014}", start + i))
                .map_err(|e| SimError::Invalid(e.to_string()))
        })
        .collect()
}

/// Whether modem `i` of `n` is among the `round(n * fraction)` picked, spread evenly.
pub fn is_picked(i: usize, n: usize, fraction: f64) -> bool {
    if n == 0 || fraction <= 0.0 {
        return false;
    }
    let fraction = fraction.min(1.0);
    // Number picked among the first k modems: floor(k * fraction + 0.5), capped at k.
    let picked_before = |k: usize| ((k as f64) * fraction + 0.5).floor() as usize;
    picked_before(i + 1) > picked_before(i)
}

/// The model of modem `i`: the models taken in turn.
fn model_of(models: &[String], i: usize) -> Option<&str> {
    (!models.is_empty()).then(|| models[i % models.len()].as_str())
}

/// Running modems, their handles and shared counters.
#[derive(Debug)]
pub struct Fleet {
    handles: Vec<ModemHandle>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Spawns every modem at once; the connect gate spreads the connections. Must be
    /// called inside a tokio runtime.
    pub fn start(config: FleetConfig, transport: FleetTransport) -> Result<Self, SimError> {
        let imeis = fleet_imeis(&config.first_imei_body, config.count)?;
        let mut credentials = match transport {
            FleetTransport::Plain => None,
            FleetTransport::MutualTls { base, credentials } => {
                if credentials.len() != config.count {
                    return Err(SimError::Invalid(format!(
                        "{} credentials for {} modems",
                        credentials.len(),
                        config.count
                    )));
                }
                Some((base, credentials.into_iter()))
            }
        };
        let counters = Arc::new(Counters::new(config.count as u64));
        let gate = Arc::new(Semaphore::new(config.connect_concurrency.max(1)));
        let cancel = CancellationToken::new();
        let mut tasks = Vec::with_capacity(config.count);
        let mut handles = Vec::with_capacity(config.count);
        for (i, imei) in imeis.into_iter().enumerate() {
            let transport = match &mut credentials {
                None => Transport::Plain,
                Some((base, creds)) => Transport::MutualTls {
                    base: base.clone(),
                    credentials: creds
                        .next()
                        .ok_or_else(|| SimError::Invalid("missing credentials".into()))?,
                },
            };
            let behaviour = match config.misbehaviour {
                Some((b, f)) if is_picked(i, config.count, f) => b,
                _ => config.behaviour,
            };
            let mut modem = SimModem::new(imei, transport, config.settings.clone())
                .with_counters(counters.clone())
                .with_behaviour(behaviour)
                .with_connect_gate(gate.clone());
            if let Some(model) = model_of(&config.models, i) {
                modem = modem.with_model(model);
            }
            if let Some(dir) = &config.credential_cache {
                let (key, cert) = crate::enroll::cache_paths(dir, modem.imei());
                modem = modem.with_credential_cache(key, cert);
            }
            let (handle, task) = modem.spawn(cancel.child_token());
            tasks.push(task);
            handles.push(handle);
        }
        Ok(Self {
            handles,
            counters,
            cancel,
            tasks,
        })
    }

    /// One handle per modem, in IMEI order.
    pub fn handles(&self) -> &[ModemHandle] {
        &self.handles
    }

    /// The handle of the modem with `imei`.
    pub fn handle(&self, imei: &Imei) -> Option<&ModemHandle> {
        self.handles.iter().find(|h| h.imei() == imei)
    }

    /// The fleet's counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Waits until every modem has been connected at least once; `false` on timeout.
    pub async fn wait_all_connected(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |c| c.time_to_all_connected().is_some())
            .await
    }

    /// Waits until `condition` holds (checked every 20 ms); `false` on timeout.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        condition: impl Fn(&Counters) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if condition(&self.counters) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Disconnects every modem and waits for their tasks to end.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for Fleet {
    /// A fleet dropped without [`Fleet::shutdown`] still stops its modems.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imeis_are_consecutive_and_valid() {
        let v = fleet_imeis("35693803564380", 3).unwrap();
        assert_eq!(v[0].as_str(), "356938035643809");
        assert_eq!(&v[2].as_str()[..14], "35693803564382");
        assert!(fleet_imeis("1234", 1).is_err());
        assert!(fleet_imeis("99999999999999", 2).is_err());
        assert_eq!(fleet_imeis("99999999999999", 1).unwrap().len(), 1);
    }

    #[test]
    fn models_are_given_in_turn() {
        let models = vec!["MTX-4G".to_owned(), "MTX-3G".to_owned()];
        let got: Vec<_> = (0..5).map(|i| model_of(&models, i)).collect();
        assert_eq!(
            got,
            [
                Some("MTX-4G"),
                Some("MTX-3G"),
                Some("MTX-4G"),
                Some("MTX-3G"),
                Some("MTX-4G")
            ]
        );
        assert_eq!(model_of(&[], 3), None);
    }

    #[test]
    fn picks_an_even_fraction() {
        for (n, f, want) in [
            (100, 0.1, 10),
            (10, 0.25, 3),
            (7, 1.0, 7),
            (7, 0.0, 0),
            (1000, 0.333, 333),
        ] {
            let picked: Vec<usize> = (0..n).filter(|i| is_picked(*i, n, f)).collect();
            assert_eq!(picked.len(), want, "{n} {f}");
        }
        // Spread, not clustered at the start.
        let picked: Vec<usize> = (0..100).filter(|i| is_picked(*i, 100, 0.1)).collect();
        assert!(picked.windows(2).all(|w| w[1] - w[0] == 10), "{picked:?}");
    }
}
