//! A minimal test modem: rumqttc over mutual TLS, the commands it receives on a channel,
//! replies sent by the test (or automatically).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;

use crate::helpers::Enrolled;

pub struct TestModem {
    pub client: AsyncClient,
    pub imei: String,
    pub commands: mpsc::Receiver<String>,
    pub connack: mpsc::Receiver<Result<(), String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestModem {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn tls(e: &Enrolled) -> Arc<rustls::ClientConfig> {
    callhome_ca::tls::client_config(&e.ca_pem, Some(&e.cert_pem), Some(&e.key_pem)).unwrap()
}

impl TestModem {
    /// Connects with `client_id` (normally the IMEI) and the given TLS config; does not wait.
    pub fn start(
        addr: std::net::SocketAddr,
        client_id: &str,
        imei: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        let mut opts = MqttOptions::new(client_id, "localhost", addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let (cmd_tx, commands) = mpsc::channel(64);
        let (ack_tx, connack) = mpsc::channel(4);
        let topic = format!("{imei}/AT");
        let sub_client = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub_client.subscribe(topic.clone(), QoS::AtLeastOnce).await;
                        let _ = ack_tx.send(Ok(())).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                        let _ = cmd_tx
                            .send(String::from_utf8_lossy(&p.payload).into_owned())
                            .await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = ack_tx.try_send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        Self {
            client,
            imei: imei.to_owned(),
            commands,
            connack,
            task,
        }
    }

    /// Connects as the enrolled device and waits for the CONNACK and subscription.
    pub async fn connect(addr: std::net::SocketAddr, e: &Enrolled) -> Self {
        let mut m = Self::start(addr, &e.imei, &e.imei, tls(e));
        let ack = tokio::time::timeout(Duration::from_secs(10), m.connack.recv())
            .await
            .expect("CONNACK in time");
        assert_eq!(ack, Some(Ok(())), "modem {} connects", e.imei);
        // Let the SUBSCRIBE reach the gateway before the test queues commands.
        tokio::time::sleep(Duration::from_millis(100)).await;
        m
    }

    pub async fn next_command(&mut self, within: Duration) -> Option<String> {
        tokio::time::timeout(within, self.commands.recv())
            .await
            .ok()
            .flatten()
    }

    pub async fn reply(&self, text: &str) {
        self.client
            .publish(
                format!("{}/ATR", self.imei),
                QoS::AtLeastOnce,
                false,
                text.as_bytes().to_vec(),
            )
            .await
            .unwrap();
    }

    /// Answers every command with `OK` (and `+CSQ: 20,99` first for AT+CSQ) from now on.
    pub fn auto_reply(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(cmd) = self.commands.recv().await {
                let text = if cmd == "AT+CSQ" {
                    "\r\n+CSQ: 20,99\r\n\r\nOK\r\n"
                } else {
                    "\r\nOK\r\n"
                };
                self.reply(text).await;
            }
        })
    }
}
