//! The expiry watch on real databases: two "nodes" (two stores, two watches) on one database
//! race their checks, and each (certificate, threshold) is published exactly once. Runs on
//! SQLite, and on PostgreSQL when `TEST_DATABASE_URL` is set.

use std::sync::{Arc, Mutex};

use callhome_core::Imei;
use callhome_core::certificates::ExpiryThresholds;
use callhome_core::events::{CertificateExpiring, EventPayload};
use callhome_pki::{ExpiryWatch, WatchSettings};
use callhome_store::testing::TestDatabase;
use callhome_store::{CertificateRecord, NewDevice, OpenOptions, Store, open};
use time::{Duration, OffsetDateTime};

fn imei(n: u64) -> Imei {
    Imei::from_body(&format!("35000000{n:06}")).unwrap()
}

type Seen = Arc<Mutex<Vec<CertificateExpiring>>>;

fn node(store: Arc<dyn Store>, seen: &Seen) -> ExpiryWatch {
    let seen = seen.clone();
    ExpiryWatch::new(
        store,
        WatchSettings {
            thresholds: ExpiryThresholds::parse(&[7, 30, 60]).unwrap(),
            ..WatchSettings::default()
        },
        Arc::new(move |imei, payload| {
            let EventPayload::CertificateExpiring(e) = payload else {
                panic!("unexpected event {payload:?}");
            };
            assert_eq!(imei, &e.imei);
            seen.lock().unwrap().push(e);
        }),
    )
}

async fn scenario(url: &str) {
    let a = open(url, &OpenOptions::default()).await.unwrap();
    let b = open(url, &OpenOptions::default()).await.unwrap();
    let now = OffsetDateTime::now_utc().replace_millisecond(0).unwrap();
    let cert = |serial: &str, n: u64, age_days: i64, days: i64| CertificateRecord {
        serial: serial.into(),
        imei: imei(n),
        common_name: imei(n).to_string(),
        fingerprint_sha256: "00".into(),
        certificate_pem: "not parsed here".into(),
        not_before: now - Duration::days(age_days),
        not_after: now + Duration::days(days) + Duration::hours(1),
        issued_by: "ops".into(),
        created_at: now - Duration::days(age_days),
        revocation: None,
    };
    for n in 1..=4 {
        a.create_device(&NewDevice {
            imei: imei(n),
            name: None,
            model: None,
            tags: vec![],
        })
        .await
        .unwrap();
    }
    // 45 days left: 60 crossed. 5 days left: 60, 30 and 7 crossed, 7 reported only.
    // 100 days left: nothing. Device 4's old one (3 days) is renewed by a newer one.
    for c in [
        cert("0A", 1, 10, 45),
        cert("0B", 2, 10, 5),
        cert("0C", 3, 10, 100),
        cert("0D", 4, 20, 3),
        cert("0E", 4, 1, 400),
    ] {
        a.insert_certificate(&c).await.unwrap();
    }
    let seen: Seen = Arc::default();
    let (na, nb) = (node(a.clone(), &seen), node(b.clone(), &seen));
    for round in 0..3 {
        let (ra, rb) = tokio::join!(na.check_expiry(now), nb.check_expiry(now));
        let published = ra.unwrap().len() + rb.unwrap().len();
        assert_eq!(published, if round == 0 { 2 } else { 0 }, "round {round}");
    }
    let mut got: Vec<(String, u32, i64)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.serial.clone(), e.threshold_days, e.days_left))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("0A".to_owned(), 60, 45), ("0B".to_owned(), 7, 5)],
        "once per (certificate, threshold), the tightest crossed only"
    );
    assert_eq!(
        a.expiry_notices("0B").await.unwrap(),
        [(60, false), (30, false), (7, true)]
    );
    // Twenty days later 0A crosses 30: one more event, on whichever node wins.
    let later = now + Duration::days(20);
    let (ra, rb) = tokio::join!(na.check_expiry(later), nb.check_expiry(later));
    let fresh: Vec<_> = ra.unwrap().into_iter().chain(rb.unwrap()).collect();
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert_eq!(
        (fresh[0].serial.as_str(), fresh[0].threshold_days),
        ("0A", 30)
    );
    // The gauges, from count queries: every active certificate counts, renewed or not
    // (0A 45 days, 0B 5, 0C 100, 0D 3, 0E 400).
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    {
        let _local = metrics::set_default_local_recorder(&recorder);
        na.update_gauges(now).await.unwrap();
    }
    let text = handle.render();
    for line in [
        "callhome_certificates_expiring{within_days=\"60\"} 3",
        "callhome_certificates_expiring{within_days=\"30\"} 2",
        "callhome_certificates_expiring{within_days=\"7\"} 2",
        "callhome_certificates{state=\"active\"} 5",
        "callhome_certificates{state=\"revoked\"} 0",
        "callhome_certificates{state=\"expired\"} 0",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn two_nodes_publish_each_notice_once() {
    let sqlite = TestDatabase::sqlite().unwrap();
    scenario(&sqlite.url).await;
    sqlite.cleanup().await.unwrap();
    println!("watch: passed on SQLite");
    if let Some(pg) = TestDatabase::postgres_from_env().await.unwrap() {
        scenario(&pg.url).await;
        pg.cleanup().await.unwrap();
        println!("watch: passed on PostgreSQL");
    }
}

#[test]
fn public_key_hash_is_of_the_subject_public_key_info() {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["a".into()]).unwrap();
    let one = params.self_signed(&key).unwrap().pem();
    let params = rcgen::CertificateParams::new(vec!["b".into()]).unwrap();
    let two = params.self_signed(&key).unwrap().pem();
    let h1 = callhome_pki::watch::public_key_sha256(&one).unwrap();
    assert_eq!(
        h1,
        callhome_pki::watch::public_key_sha256(&two).unwrap(),
        "same key, two certificates"
    );
    assert_eq!(h1.len(), 64);
    let other = rcgen::KeyPair::generate().unwrap();
    let three = rcgen::CertificateParams::new(vec!["a".into()])
        .unwrap()
        .self_signed(&other)
        .unwrap()
        .pem();
    assert_ne!(h1, callhome_pki::watch::public_key_sha256(&three).unwrap());
    assert!(callhome_pki::watch::public_key_sha256("garbage").is_err());
}
