//! `callhome ca ...`: the certificate authority in the data directory.

use anyhow::{Context as _, bail};
use callhome_ca::Authority;

use crate::cli::CaAction;
use crate::config::Settings;
use crate::server::CA_DIR;

pub(super) fn run(settings: &Settings, action: CaAction) -> anyhow::Result<()> {
    let dir = settings.data_dir.join(CA_DIR);
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    match action {
        CaAction::Show => {
            let ca = Authority::load(&dir, &settings.ca)
                .with_context(|| format!("loading the CA in {}", dir.display()))?;
            for c in ca.issuing_cas() {
                println!(
                    "{} issuing CA {}",
                    if c.current { "current" } else { "retired" },
                    c.subject
                );
                println!("  fingerprint  {}", c.fingerprint_sha256);
                println!("  not after    {}", c.not_after);
                println!(
                    "  key id       {} (its CRL: <device listener>/crl/{}.crl)",
                    c.key_id, c.key_id
                );
                println!(
                    "  root         {} ({})",
                    c.root_subject, c.root_fingerprint_sha256
                );
            }
        }
        CaAction::Csr {
            common_name,
            organization,
            output,
        } => {
            let csr = Authority::issuing_ca_csr(&dir, &common_name, organization.as_deref())?;
            match output {
                Some(path) => {
                    std::fs::write(&path, &csr)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "CSR written to {}; its key waits in {}; have it signed as a CA by your root, then run `callhome ca import --cert SIGNED.pem --chain ROOT_CHAIN.pem`",
                        path.display(),
                        dir.display()
                    );
                }
                None => print!("{csr}"),
            }
        }
        CaAction::Import { cert, key, chain } => {
            let cert_pem = read(&cert)?;
            let key_pem = key.as_deref().map(read).transpose()?;
            let chain_pem = chain.as_deref().map(read).transpose()?;
            if key.is_none() && !dir.join(callhome_ca::PENDING_KEY_FILE).exists() {
                bail!(
                    "no --key given and no key made by `callhome ca csr` waits in {}",
                    dir.display()
                );
            }
            let out = Authority::import_issuing_ca(
                &dir,
                &cert_pem,
                key_pem.as_deref(),
                chain_pem.as_deref(),
            )?;
            println!("imported issuing CA {}", out.subject);
            println!("  fingerprint  {}", out.fingerprint_sha256);
            println!("  not after    {}", out.not_after);
            println!("  root         {}", out.root_subject);
            println!(
                "retired (still trusted) {}; restart the server to issue from the new CA",
                out.retired_fingerprint_sha256
            );
        }
        CaAction::RemoveRetired { fingerprint } => {
            let full = Authority::remove_retired(&dir, &fingerprint)?;
            println!(
                "retired CA {full} is no longer trusted (moved to the archive); restart the server"
            );
        }
    }
    Ok(())
}
