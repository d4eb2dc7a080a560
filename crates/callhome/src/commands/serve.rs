//! `callhome serve`.

use anyhow::Context as _;

use crate::config::Settings;
use crate::server::{self, ADMIN_PASSWORD_FILE, AdminBootstrap};

pub(super) async fn run(settings: &Settings) -> anyhow::Result<()> {
    tracing::debug!(?settings, "settings");
    let running = server::start(settings).await?;
    let http = running.http_addr;
    let pw_file = running.data_dir.join(ADMIN_PASSWORD_FILE);
    println!("Callhome {} is serving", env!("CARGO_PKG_VERSION"));
    println!("  API:         http://{http}/api/v1");
    println!("  Swagger UI:  http://{http}/docs");
    println!(
        "  Modems:      mqtts://{} (MQTT 3.1.1 over mutual TLS)",
        running.mqtt_addr
    );
    println!(
        "  Tunnel:      {} (meter-reading rendezvous, mutual TLS)",
        running.tunnel_addr
    );
    println!(
        "  Devices:     https://{} (firmware downloads, mutual TLS; modems are told {})",
        running.device_http_addr, running.device_http_url
    );
    println!(
        "  CA root:     http://{http}/api/v1/ca/certificate (SHA-256 {})",
        running.ca_fingerprint
    );
    println!("  Data dir:    {}", running.data_dir.display());
    println!(
        "  Database:    {}",
        callhome_store::redact_url(&settings.database_url)
    );
    match &running.admin {
        AdminBootstrap::CreatedWithGeneratedPassword(pw) => {
            println!("  Admin:       user \"admin\", password {pw}");
            println!(
                "               (shown once; also saved in {})",
                pw_file.display()
            );
        }
        AdminBootstrap::CreatedWithGivenPassword => {
            println!("  Admin:       user \"admin\", password from CALLHOME_ADMIN_PASSWORD");
        }
        AdminBootstrap::Existing if pw_file.exists() => {
            println!(
                "  Admin:       user \"admin\", generated password in {}",
                pw_file.display()
            );
        }
        AdminBootstrap::Existing => println!("  Admin:       existing users kept"),
    }
    println!(
        "callhome: listening http={http} mqtt={} tunnel={} device_http={}",
        running.mqtt_addr, running.tunnel_addr, running.device_http_addr
    );

    let token = running.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    running
        .wait()
        .await
        .context("server stopped with an error")?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
