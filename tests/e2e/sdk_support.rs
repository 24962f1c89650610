//! What the SDK examples' tests share: a toy running in the background
//! with its output in files, and a parent's device watching over real
//! MQTT (tests/e2e/sdk_python.rs, tests/e2e/sdk_c.rs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{Packet, QoS, SubscribeReasonCode};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::support::*;

pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

pub fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// A toy's `run` in the background, its output in files; killed if the
/// test ends early.
pub struct Running {
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Running {
    /// Starts `toy` (its `run` command line, made by the caller), with its
    /// output in files beside `dir`.
    pub fn start(mut toy: Command, dir: &Path) -> Running {
        let stdout = dir.with_extension("out");
        let stderr = dir.with_extension("err");
        let child = toy
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("run the toy");
        Running {
            child,
            stdout,
            stderr,
        }
    }

    pub fn said(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn complained(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until its output (stdout and stderr) contains `needle`.
    pub async fn wait_for(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.said().contains(needle) || self.complained().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// SIGTERM, then the exit status (a clean DISCONNECT first).
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        kill(&self.child, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the toy did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parent's device watching: every incoming packet, in order.
pub struct Parent {
    pub id: String,
    pub client: rumqttc::AsyncClient,
    packets: mpsc::UnboundedReceiver<Packet>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Parent {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Parent {
    pub async fn connect(hub: &TestHub, device: &Device) -> Parent {
        let mut options = mqtt_v4(hub, device, &device.id);
        options.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
        v4_connected(&mut events)
            .await
            .expect("the parent connects");
        let (tx, packets) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let rumqttc::Event::Incoming(packet) = event {
                    if tx.send(packet).is_err() {
                        return;
                    }
                }
            }
        });
        Parent {
            id: device.id.clone(),
            client,
            packets,
            driver,
        }
    }

    /// Subscribes and returns whether the hub granted it.
    pub async fn subscribe(&mut self, filter: &str) -> bool {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        let ack = self
            .next(Duration::from_secs(10), |p| matches!(p, Packet::SubAck(_)))
            .await
            .expect("a SUBACK");
        let Packet::SubAck(ack) = ack else {
            unreachable!()
        };
        matches!(ack.return_codes[..], [SubscribeReasonCode::Success(_)])
    }

    pub async fn next(
        &mut self,
        limit: Duration,
        want: impl Fn(&Packet) -> bool,
    ) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.packets.recv()).await {
                Ok(Some(p)) if want(&p) => return Some(p),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    /// The next PUBLISH on `topic` whose JSON payload satisfies `want`.
    pub async fn publish_on(
        &mut self,
        topic: &str,
        limit: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> Option<(rumqttc::Publish, Value)> {
        let got = self
            .next(limit, |p| match p {
                Packet::Publish(p) if p.topic == topic => {
                    serde_json::from_slice(&p.payload).is_ok_and(|v: Value| want(&v))
                }
                _ => false,
            })
            .await?;
        let Packet::Publish(p) = got else {
            unreachable!()
        };
        let value = serde_json::from_slice(&p.payload).unwrap();
        Some((p, value))
    }

    /// Forgets what arrived so far.
    pub fn drain(&mut self) {
        while self.packets.try_recv().is_ok() {}
    }

    pub async fn publish(&self, topic: String, payload: Value) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await
            .unwrap();
    }

    pub fn inbox(&self) -> String {
        format!("hearth/v1/dev/{}/inbox", self.id)
    }
}
