//! The store test suite: every scenario runs against a fresh SQLite file, and against a fresh
//! PostgreSQL schema when `TEST_DATABASE_URL` is set (CI sets it). Each run prints which
//! backends it covered, so the CI log shows both.

use std::future::Future;
use std::sync::Arc;

use callhome_core::{CertificateState, Imei, Role};
use callhome_store::testing::TestDatabase;
use callhome_store::*;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// Runs `scenario` on SQLite, then on PostgreSQL if configured.
async fn on_each_backend<F, Fut>(name: &str, scenario: F)
where
    F: Fn(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut dbs = vec![TestDatabase::sqlite().expect("sqlite test db")];
    if let Some(pg) = TestDatabase::postgres_from_env()
        .await
        .expect("postgres test schema")
    {
        dbs.push(pg);
    }
    for db in dbs {
        let store = open(&db.url, &OpenOptions::default())
            .await
            .expect("open store");
        let backend = store.backend();
        scenario(store.clone()).await;
        store.close().await;
        db.cleanup().await.expect("cleanup");
        println!("store suite: {name} passed on {backend:?}");
    }
}

/// An execution's end, as `finish_job_device` takes it.
fn end<'a>(
    state: callhome_core::jobs::ExecState,
    error: Option<&'a str>,
    result: Option<&'a str>,
    outcome: Option<callhome_core::firmware::UpdateOutcome>,
    at: OffsetDateTime,
) -> ExecutionEnd<'a> {
    ExecutionEnd {
        state,
        error,
        result,
        outcome,
        at,
    }
}

fn imei(n: u64) -> Imei {
    Imei::from_body(&format!("35000000{n:06}")).unwrap()
}

#[tokio::test]
async fn users_roundtrip_and_conflicts() {
    on_each_backend("users", |s| async move {
        let u = s
            .create_user(&NewUser {
                username: "alice".into(),
                password_hash: "$argon2id$x".into(),
                role: Role::Operator,
            })
            .await
            .unwrap();
        assert_eq!(s.get_user_by_name("alice").await.unwrap(), u);
        assert_eq!(s.get_user(u.id).await.unwrap(), u);
        let dup = s
            .create_user(&NewUser {
                username: "alice".into(),
                password_hash: "h".into(),
                role: Role::Reader,
            })
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict { detail: m, .. }) if m.contains("alice")));
        let u2 = s
            .update_user(
                u.id,
                &UserPatch {
                    disabled: Some(true),
                    role: Some(Role::Admin),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(u2.disabled);
        assert_eq!(u2.role, Role::Admin);
        assert_eq!(u2.password_hash, u.password_hash);
        assert!(matches!(
            s.get_user_by_name("bob").await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.update_user(uuid::Uuid::new_v4(), &UserPatch::default())
                .await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(s.list_users().await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn api_keys_lookup_touch_revoke() {
    on_each_backend("api_keys", |s| async move {
        let k = s
            .create_api_key(&NewApiKey {
                name: "reading centre".into(),
                prefix: "abcd1234".into(),
                key_hash: "00ff".into(),
                role: Role::Reader,
                created_by: "admin".into(),
                expires_at: None,
            })
            .await
            .unwrap();
        assert_eq!(s.get_api_key_by_prefix("abcd1234").await.unwrap().id, k.id);
        let now = OffsetDateTime::now_utc();
        s.touch_api_key(k.id, now).await.unwrap();
        let k2 = s.get_api_key_by_prefix("abcd1234").await.unwrap();
        assert!(k2.last_used_at.is_some());
        let r = s.revoke_api_key(k.id, now).await.unwrap();
        assert!(r.revoked_at.is_some());
        assert!(matches!(
            s.revoke_api_key(k.id, now).await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            s.revoke_api_key(uuid::Uuid::new_v4(), now).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(s.list_api_keys().await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn devices_crud_filters_and_pagination() {
    on_each_backend("devices", |s| async move {
        for n in 0..25u64 {
            let tags = if n % 2 == 0 {
                vec!["even".to_string(), "all".into()]
            } else {
                vec!["all".into()]
            };
            s.create_device(&NewDevice {
                imei: imei(n),
                name: Some(format!("Meter_{n} 100%")),
                model: Some("199801422".into()),
                tags,
            })
            .await
            .unwrap();
        }
        let dup = s
            .create_device(&NewDevice {
                imei: imei(3),
                name: None,
                model: None,
                tags: vec![],
            })
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict { detail: m, .. }) if m.contains(imei(3).as_str())));

        // Pagination walks every device exactly once, in IMEI order.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .list_devices(&DeviceFilter {
                    after: after.clone(),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap();
            seen.extend(page.items.iter().map(|d| d.imei.clone()));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));

        let even = s
            .list_devices(&DeviceFilter {
                tag: Some("even".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(even.items.len(), 13);
        // Text search is case-insensitive and treats % and _ literally.
        let hit = s
            .list_devices(&DeviceFilter {
                text: Some("METER_7 ".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(hit.items.len(), 1);
        let pct = s
            .list_devices(&DeviceFilter {
                text: Some("0%".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(pct.items.len(), 25);
        let none = s
            .list_devices(&DeviceFilter {
                text: Some("meter%7".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(none.items.len(), 0);

        let d = s
            .update_device(
                &imei(2),
                &DevicePatch {
                    name: Some(None),
                    tags: Some(vec!["moved".into()]),
                    disabled: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(d.name, None);
        assert_eq!(d.tags, vec!["moved".to_string()]);
        assert!(d.disabled);
        assert_eq!(d.model.as_deref(), Some("199801422"));
        assert_eq!(s.get_device(&imei(2)).await.unwrap(), d);
        let even = s
            .list_devices(&DeviceFilter {
                tag: Some("even".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(even.items.len(), 12);

        s.delete_device(&imei(2)).await.unwrap();
        assert!(matches!(
            s.get_device(&imei(2)).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.delete_device(&imei(2)).await,
            Err(StoreError::NotFound(_))
        ));
        let moved = s
            .list_devices(&DeviceFilter {
                tag: Some("moved".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(moved.items.is_empty(), "tags go with the device");
    })
    .await;
}

#[tokio::test]
async fn certificate_inventory_and_revocation() {
    on_each_backend("certificates", |s| async move {
        let now = OffsetDateTime::now_utc().replace_millisecond(0).unwrap();
        let rec = |serial: &str, days: i64| CertificateRecord {
            serial: serial.into(),
            imei: imei(1),
            common_name: imei(1).to_string(),
            fingerprint_sha256: "ab".into(),
            certificate_pem: "-----BEGIN CERTIFICATE-----".into(),
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(days),
            issued_by: "admin".into(),
            created_at: now,
            revocation: None,
        };
        s.insert_certificate(&rec("0A", 30)).await.unwrap();
        s.insert_certificate(&rec("0B", 30)).await.unwrap();
        s.insert_certificate(&rec("0C", -1)).await.unwrap();
        assert!(matches!(
            s.insert_certificate(&rec("0A", 30)).await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(s.get_certificate("0A").await.unwrap(), rec("0A", 30));
        assert_eq!(s.list_certificates(&imei(1)).await.unwrap().len(), 3);

        let revocation = Revocation {
            at: now,
            reason: Some("key_compromise".into()),
            by: "ops".into(),
        };
        let r = s.revoke_certificate("0A", &revocation).await.unwrap();
        assert_eq!(r.revocation.as_ref(), Some(&revocation));
        assert!(matches!(
            s.revoke_certificate("0A", &revocation).await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            s.revoke_certificate("FF", &revocation).await,
            Err(StoreError::NotFound(_))
        ));
        s.revoke_certificate("0C", &revocation).await.unwrap();
        // Expired certificates leave the CRL.
        let revoked = s.list_revoked_certificates(now).await.unwrap();
        assert_eq!(
            revoked
                .iter()
                .map(|c| c.serial.as_str())
                .collect::<Vec<_>>(),
            ["0A"]
        );
    })
    .await;
}

#[tokio::test]
async fn audit_log_pages_newest_first() {
    on_each_backend("audit", |s| async move {
        for i in 0..7 {
            s.append_audit(&NewAuditEntry {
                at: OffsetDateTime::now_utc(),
                actor: if i % 2 == 0 {
                    "admin".into()
                } else {
                    "ops".into()
                },
                actor_kind: callhome_core::ActorKind::User,
                action: "POST /api/v1/devices".into(),
                target: Some(format!("t{i}")),
                outcome: callhome_core::AuditOutcome::Success,
                status: Some(201),
                detail: None,
                remote_addr: Some("127.0.0.1".into()),
                request_id: None,
            })
            .await
            .unwrap();
        }
        let p1 = s
            .list_audit(&AuditFilter {
                limit: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(p1.items.len(), 5);
        assert_eq!(p1.items[0].target.as_deref(), Some("t6"));
        let before = p1.next.as_deref().unwrap().parse().unwrap();
        let p2 = s
            .list_audit(&AuditFilter {
                limit: 5,
                before: Some(before),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(p2.items.len(), 2);
        assert!(p2.next.is_none());
        let ops = s
            .list_audit(&AuditFilter {
                limit: 50,
                actor: Some("ops".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(ops.items.len(), 3);
        assert_eq!(ops.items[0].status, Some(201));
    })
    .await;
}

#[tokio::test]
async fn reopening_keeps_data_and_migrations_are_idempotent() {
    let db = TestDatabase::sqlite().unwrap();
    let s = open(&db.url, &OpenOptions::default()).await.unwrap();
    s.create_device(&NewDevice {
        imei: imei(9),
        name: None,
        model: None,
        tags: vec![],
    })
    .await
    .unwrap();
    s.close().await;
    let s = open(&db.url, &OpenOptions::default()).await.unwrap();
    assert!(s.get_device(&imei(9)).await.is_ok());
    assert!(matches!(
        open("mysql://x", &OpenOptions::default()).await,
        Err(StoreError::InvalidUrl(_))
    ));
}

/// A closed pool is `Unavailable` (the API's 503), not an opaque database error; a
/// duplicate is a `Conflict` whatever the backend.
#[tokio::test]
async fn errors_are_classified_by_the_store() {
    on_each_backend("errors_are_classified_by_the_store", |s| async move {
        let dev = NewDevice {
            imei: imei(11),
            name: None,
            model: None,
            tags: vec![],
        };
        s.create_device(&dev).await.unwrap();
        assert!(matches!(
            s.create_device(&dev).await,
            Err(StoreError::Conflict { detail, .. }) if detail.contains(imei(11).as_str())
        ));
        s.close().await;
        let err = s.get_device(&imei(11)).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    })
    .await;
}

/// The SQLite file and its WAL/SHM companions hold password hashes and secrets: 0600, also
/// when an older version left them world-readable.
#[cfg(unix)]
#[tokio::test]
async fn sqlite_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callhome.db");
    let url = format!("sqlite://{}", path.display());
    let mode = |suffix: &str| {
        let p = format!("{}{suffix}", path.display());
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    let s = open(&url, &OpenOptions::default()).await.unwrap();
    s.create_device(&NewDevice {
        imei: imei(7),
        name: None,
        model: None,
        tags: vec![],
    })
    .await
    .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(mode(suffix), 0o600, "callhome.db{suffix}");
    }
    s.close().await;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = open(&url, &OpenOptions::default()).await.unwrap();
    assert_eq!(mode(""), 0o600, "an existing 0644 file is tightened");
    assert!(s.get_device(&imei(7)).await.is_ok());
    s.close().await;
}

async fn registered(s: &Arc<dyn Store>, n: u64) -> Imei {
    let id = imei(n);
    s.create_device(&NewDevice {
        imei: id.clone(),
        name: None,
        model: None,
        tags: vec![],
    })
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn presence_sessions_and_takeover() {
    on_each_backend("presence", |s| async move {
        let d = registered(&s, 40).await;
        let t0 = OffsetDateTime::now_utc();
        let rec = |sid: &str| OnlineRecord {
            session_id: sid.into(),
            at: t0,
            remote_addr: "127.0.0.1:5000".into(),
            cert_serial: Some("0A".into()),
        };
        s.mark_online(&d, &rec("node1-a")).await.unwrap();
        assert_eq!(s.count_online().await.unwrap(), 1);
        // A second connection takes over; the first one's end must not mark it offline.
        s.mark_online(&d, &rec("node1-b")).await.unwrap();
        assert!(!s.mark_offline(&d, "node1-a", t0).await.unwrap());
        let dev = s.get_device(&d).await.unwrap();
        assert!(dev.presence.online);
        assert_eq!(dev.presence.session_id.as_deref(), Some("node1-b"));
        assert_eq!(dev.presence.cert_serial.as_deref(), Some("0A"));
        let online = s
            .list_devices(&DeviceFilter {
                online: Some(true),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(online.items.len(), 1);
        assert!(
            s.mark_offline(&d, "node1-b", t0 + Duration::seconds(5))
                .await
                .unwrap()
        );
        let dev = s.get_device(&d).await.unwrap();
        assert!(!dev.presence.online);
        assert!(dev.presence.disconnected_at.is_some());
        // A restart marks this node's leftover sessions offline.
        s.mark_online(&d, &rec("node1-c")).await.unwrap();
        assert_eq!(s.mark_node_offline("node2-", t0).await.unwrap(), 0);
        assert_eq!(s.mark_node_offline("node1-", t0).await.unwrap(), 1);
        assert_eq!(s.count_online().await.unwrap(), 0);
        s.touch_last_seen(&[(d.clone(), t0 + Duration::minutes(1))])
            .await
            .unwrap();
        assert!(s.get_device(&d).await.unwrap().presence.last_seen.unwrap() > t0);
        assert!(matches!(
            s.mark_online(&imei(41), &rec("x")).await,
            Err(StoreError::NotFound(_))
        ));
        // Legacy MQTT credentials are unique.
        let patch = DevicePatch {
            mqtt_credentials: Some(Some(("meter-login".into(), "$argon2id$h".into()))),
            reply_topic: Some(Some("custom/ATR".into())),
            ..Default::default()
        };
        let dev = s.update_device(&d, &patch).await.unwrap();
        assert_eq!(dev.mqtt.username.as_deref(), Some("meter-login"));
        assert_eq!(dev.mqtt.reply_topic.as_deref(), Some("custom/ATR"));
        assert_eq!(
            s.get_device_by_mqtt_username("meter-login")
                .await
                .unwrap()
                .imei,
            d
        );
        let other = registered(&s, 42).await;
        assert!(matches!(
            s.update_device(&other, &patch).await,
            Err(StoreError::Conflict { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn status_log_history_and_retention() {
    on_each_backend("status", |s| async move {
        let d = registered(&s, 50).await;
        let t0 = OffsetDateTime::now_utc() - Duration::hours(2);
        for i in 0..5i64 {
            s.append_status(&NewStatus {
                imei: d.clone(),
                received_at: t0 + Duration::minutes(30 * i),
                topic: format!("{d}/dns"),
                payload: vec![0, 159, 146, 150, i as u8],
                parsed: Some(format!("{{\"n\":{i}}}")),
            })
            .await
            .unwrap();
        }
        let latest = s.latest_status(&d).await.unwrap().unwrap();
        assert_eq!(
            latest.payload,
            vec![0, 159, 146, 150, 4],
            "binary payloads kept exactly"
        );
        let since = s
            .status_history(&d, Some(t0 + Duration::minutes(45)), None, 2)
            .await
            .unwrap();
        assert_eq!(since.items.len(), 2);
        let more = s
            .status_history(
                &d,
                Some(t0 + Duration::minutes(45)),
                since.next.as_deref().map(|n| n.parse().unwrap()),
                2,
            )
            .await
            .unwrap();
        assert_eq!(more.items.len(), 1);
        assert!(more.next.is_none());
        assert_eq!(s.prune_status(t0 + Duration::minutes(61)).await.unwrap(), 3);
        assert_eq!(
            s.status_history(&d, None, None, 100)
                .await
                .unwrap()
                .items
                .len(),
            2
        );
    })
    .await;
}

#[tokio::test]
async fn command_queue_state_machine() {
    on_each_backend("commands", |s| async move {
        let d = registered(&s, 60).await;
        let now = OffsetDateTime::now_utc();
        let new = |cmd: &str, expires: Duration| NewCommand {
            imei: d.clone(),
            command: cmd.into(),
            created_by: "ops".into(),
            timeout_ms: 5000,
            expires_at: now + expires,
            max_attempts: 2,
        };
        let a = s.enqueue_command(&new("AT", Duration::hours(1))).await.unwrap();
        let b = s.enqueue_command(&new("AT+CSQ", Duration::hours(1))).await.unwrap();
        let c = s.enqueue_command(&new("ATI", Duration::seconds(-1))).await.unwrap();
        assert_eq!(a.state, CommandState::Queued);
        // FIFO head, skipping the expired one.
        assert_eq!(s.next_queued_command(&d, now).await.unwrap().unwrap().id, a.id);
        let sent = s.mark_command_sent(a.id, now).await.unwrap();
        assert_eq!((sent.state, sent.attempts), (CommandState::Sent, 1));
        assert!(matches!(s.mark_command_sent(a.id, now).await, Err(StoreError::Conflict { .. })));
        assert_eq!(s.in_flight_command(&d).await.unwrap().unwrap().id, a.id);
        assert_eq!(s.next_queued_command(&d, now).await.unwrap().unwrap().id, b.id);
        // Retry: back to queued with the reason kept, attempts kept.
        let rq = s.requeue_command(a.id, "no reply within 5 s").await.unwrap();
        assert_eq!((rq.state, rq.attempts), (CommandState::Queued, 1));
        let sent = s.mark_command_sent(a.id, now).await.unwrap();
        assert_eq!(sent.attempts, 2);
        let done = s
            .complete_command(a.id, &CommandOutcome {
                state: CommandState::Succeeded,
                reply: Some("OK".into()),
                result: Some("OK".into()),
                error: None,
                at: now,
            })
            .await
            .unwrap();
        assert_eq!(done.state, CommandState::Succeeded);
        assert!(matches!(
            s.complete_command(a.id, &CommandOutcome { state: CommandState::Failed, reply: None, result: None, error: None, at: now }).await,
            Err(StoreError::Conflict { detail: m, .. }) if m.contains("succeeded")
        ));
        s.record_late_reply(a.id, "OK", now).await.unwrap();
        assert_eq!(s.get_command(a.id).await.unwrap().late_reply.as_deref(), Some("OK"));
        // Cancel only while queued.
        assert_eq!(s.cancel_command(b.id, now).await.unwrap().state, CommandState::Cancelled);
        assert!(matches!(s.cancel_command(a.id, now).await, Err(StoreError::Conflict { .. })));
        assert!(matches!(s.cancel_command(Uuid::now_v7(), now).await, Err(StoreError::NotFound(_))));
        // Expiry.
        assert_eq!(s.devices_with_queued_commands().await.unwrap(), vec![d.clone()]);
        let expired = s.expire_commands(now).await.unwrap();
        assert_eq!(expired.iter().map(|c| c.id).collect::<Vec<_>>(), vec![c.id]);
        assert_eq!(s.get_command(c.id).await.unwrap().state, CommandState::Expired);
        assert!(s.devices_with_queued_commands().await.unwrap().is_empty());
        // Listing: newest first, by state.
        let all = s.list_commands(&CommandFilter { imei: Some(d.to_string()), limit: 2, ..Default::default() }).await.unwrap();
        assert_eq!(all.items[0].id, c.id);
        assert!(all.next.is_some());
        let ok = s
            .list_commands(&CommandFilter { states: vec![CommandState::Succeeded, CommandState::Cancelled], limit: 10, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(ok.items.len(), 2);
        assert!(s.sent_commands().await.unwrap().is_empty());
        // Deleting the device takes its commands along.
        s.delete_device(&d).await.unwrap();
        assert!(matches!(s.get_command(a.id).await, Err(StoreError::NotFound(_))));
    })
    .await;
}

#[tokio::test]
async fn profiles_versions_assignment_and_device_config() {
    on_each_backend("configuration", |s| async move {
        let put = |name: &str, tag: Option<&str>, priority: i64, config: &str| NewProfileVersion {
            name: name.into(),
            tag: tag.map(str::to_owned),
            priority,
            config: config.into(),
            by: "ops".into(),
        };
        let v1 = s
            .put_profile(&put("north", Some("region:north"), 0, "DNS_period: 600\n"))
            .await
            .unwrap();
        assert_eq!((v1.version, v1.current_version), (1, 1));
        let v2 = s
            .put_profile(&put("north", Some("region:north"), 0, "DNS_period: 300\n"))
            .await
            .unwrap();
        assert_eq!((v2.version, v2.current_version), (2, 2));
        assert_eq!(
            s.get_profile("north", Some(1)).await.unwrap().config,
            "DNS_period: 600\n"
        );
        assert_eq!(
            s.get_profile("north", None).await.unwrap().config,
            "DNS_period: 300\n"
        );
        assert!(matches!(
            s.get_profile("north", Some(9)).await,
            Err(StoreError::NotFound(_))
        ));
        s.put_profile(&put("pilot", Some("pilot"), 10, "DNS_period: 60\n"))
            .await
            .unwrap();
        // Highest priority among matching tags wins.
        let p = s
            .profile_for_tags(&["region:north".into(), "pilot".into()])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.name, "pilot");
        let p = s
            .profile_for_tags(&["region:north".into()])
            .await
            .unwrap()
            .unwrap();
        assert_eq!((p.name.as_str(), p.version), ("north", 2));
        assert!(
            s.profile_for_tags(&["nothing".into()])
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(s.list_profiles().await.unwrap().len(), 2);

        let d = registered(&s, 70).await;
        let c = s.get_device_config(&d).await.unwrap();
        assert_eq!((c.overrides.as_str(), c.drift.as_str()), ("{}", "unknown"));
        let c = s
            .set_overrides(&d, r#"{"MTX_PIN":"1234"}"#, Some("MTX_PIN: 1234\n"), "ops")
            .await
            .unwrap();
        assert_eq!(c.overrides, r#"{"MTX_PIN":"1234"}"#);
        assert_eq!(c.document.as_deref(), Some("MTX_PIN: 1234\n"));
        let now = OffsetDateTime::now_utc();
        s.set_reported(&d, "DNS_period: 300\n", now).await.unwrap();
        s.set_drift(
            &d,
            callhome_core::DriftState::Drifted,
            Some(r#"["DNS_period"]"#),
            now,
        )
        .await
        .unwrap();
        let c = s.get_device_config(&d).await.unwrap();
        assert_eq!(c.reported.as_deref(), Some("DNS_period: 300\n"));
        assert_eq!(c.drift, callhome_core::DriftState::Drifted);
        // A check of a stale report does not overwrite what a newer report decided.
        let stale = c.reported_at.unwrap();
        let newer = stale + Duration::seconds(1);
        s.set_reported(&d, "DNS_period: 120\n", newer)
            .await
            .unwrap();
        s.set_drift(&d, callhome_core::DriftState::InSync, None, newer)
            .await
            .unwrap();
        assert!(
            !s.set_drift_if_reported(
                &d,
                callhome_core::DriftState::Drifted,
                Some(r#"["DNS_period"]"#),
                newer,
                stale
            )
            .await
            .unwrap()
        );
        assert_eq!(
            s.get_device_config(&d).await.unwrap().drift,
            callhome_core::DriftState::InSync
        );
        assert!(
            s.set_drift_if_reported(&d, callhome_core::DriftState::Drifted, None, newer, newer)
                .await
                .unwrap()
        );
        s.set_reported(&d, "DNS_period: 300\n", now).await.unwrap();
        s.set_drift(
            &d,
            callhome_core::DriftState::Drifted,
            Some(r#"["DNS_period"]"#),
            now,
        )
        .await
        .unwrap();
        let c = s.get_device_config(&d).await.unwrap();
        assert_eq!(
            c.document.as_deref(),
            Some("MTX_PIN: 1234\n"),
            "kept by other writes"
        );
        assert!(matches!(
            s.get_device_config(&imei(71)).await,
            Err(StoreError::NotFound(_))
        ));
        s.delete_profile("north").await.unwrap();
        assert!(matches!(
            s.delete_profile("north").await,
            Err(StoreError::NotFound(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn session_states_only_move_forward() {
    on_each_backend("session_states", |s| async move {
        let d = registered(&s, 80).await;
        let sess = s
            .create_session(&NewSession {
                imei: d.clone(),
                mode: callhome_core::SessionMode::Rendezvous,
                host: "127.0.0.1".into(),
                port: 7443,
                timeout_s: 60,
                pairing_timeout_s: 60,
                forward_id: false,
                token_hash: None,
                created_by: "t".into(),
                created_by_id: None,
                requested_host: None,
            })
            .await
            .unwrap();
        let set = |state| SessionUpdate {
            state: Some(state),
            ..Default::default()
        };
        assert_eq!(
            s.update_session(sess.id, &set(SessionState::ModemConnected))
                .await
                .unwrap()
                .state,
            SessionState::ModemConnected
        );
        assert_eq!(
            s.update_session(sess.id, &set(SessionState::Active))
                .await
                .unwrap()
                .state,
            SessionState::Active
        );
        // A late "reader connected" from the other end must not undo "active".
        assert_eq!(
            s.update_session(sess.id, &set(SessionState::ReaderConnected))
                .await
                .unwrap()
                .state,
            SessionState::Active
        );
        assert_eq!(
            s.update_session(sess.id, &set(SessionState::Closed))
                .await
                .unwrap()
                .state,
            SessionState::Closed
        );
        assert!(matches!(
            s.update_session(sess.id, &set(SessionState::Active)).await,
            Err(StoreError::Conflict { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn jobs_executions_and_conditional_moves() {
    use callhome_core::jobs::{ExecState, JobState};
    on_each_backend("jobs", |s| async move {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut devices = Vec::new();
        for n in 0..1200 {
            devices.push((registered(&s, 900 + n).await, if n < 200 { 1 } else { 2 }));
        }
        let online = |i: usize| devices[i].0.clone();
        for i in [0, 1, 2, 250] {
            s.mark_online(
                &online(i),
                &OnlineRecord {
                    session_id: format!("node1-{i}"),
                    at: t0,
                    remote_addr: "127.0.0.1:1".into(),
                    cert_serial: None,
                },
            )
            .await
            .unwrap();
        }
        let id = Uuid::now_v7();
        let job = s
            .create_job(&NewJob {
                id,
                name: Some("dns".into()),
                operation: r#"{"type":"reboot"}"#.into(),
                target: r#"{"tag_expr":"a"}"#.into(),
                rollout: "{}".into(),
                restart: "auto".into(),
                created_by: "ops".into(),
                created_at: t0,
                expires_at: t0 + Duration::hours(1),
                devices: devices.clone(),
                firmware_id: None,
            })
            .await
            .unwrap();
        assert_eq!(
            (job.state, job.total, job.current_wave),
            (JobState::Running, 1200, 1)
        );
        let p = s.job_progress(id).await.unwrap();
        assert_eq!((p.total, p.pending), (1200, 1200));
        // One node at a time runs a job; a lease that ran out can be taken.
        let lease = t0 + Duration::seconds(30);
        assert!(s.claim_job(id, "node1", t0, lease).await.unwrap());
        assert!(
            s.claim_job(id, "node1", t0, lease).await.unwrap(),
            "renewal"
        );
        assert!(
            !s.claim_job(id, "node2", t0 + Duration::seconds(10), lease)
                .await
                .unwrap()
        );
        let later = t0 + Duration::seconds(31);
        assert!(
            s.claim_job(id, "node2", later, later + Duration::seconds(30))
                .await
                .unwrap()
        );
        s.release_job(id, "node1").await.unwrap(); // not the holder: no effect
        assert!(!s.claim_job(id, "node1", later, later).await.unwrap());
        s.release_job(id, "node2").await.unwrap();
        assert!(s.claim_job(id, "node1", later, later).await.unwrap());
        assert!(matches!(
            s.claim_job(Uuid::now_v7(), "node1", t0, t0).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(p.waves, vec![(200, 0), (1000, 0)]);
        // Only online devices of open waves, in rollout order.
        let next = s.next_job_devices(id, 1, 10).await.unwrap();
        assert_eq!(next, vec![online(0), online(1), online(2)]);
        let next = s.next_job_devices(id, 2, 10).await.unwrap();
        assert_eq!(next.len(), 4);
        // One caller wins the start.
        let d = s.start_job_devices(id, &[online(0)], t0).await.unwrap();
        assert_eq!((d[0].state, d[0].attempts), (ExecState::InProgress, 1));
        assert!(
            s.start_job_devices(id, &[online(0)], t0)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.in_progress_job_devices(id).await.unwrap().len(), 1);
        // A batch start takes the pending ones only, in rollout order.
        let batch = s
            .start_job_devices(id, &[online(2), online(0), online(1)], t0)
            .await
            .unwrap();
        let got: Vec<&str> = batch.iter().map(|d| d.imei.as_str()).collect();
        assert_eq!(got, [online(1).as_str(), online(2).as_str()]);
        assert!(
            batch
                .iter()
                .all(|d| d.state == ExecState::InProgress && d.attempts == 1)
        );
        assert!(
            s.start_job_devices(id, &[online(1)], t0)
                .await
                .unwrap()
                .is_empty()
        );
        for i in [1, 2] {
            s.finish_job_device(
                id,
                &online(i),
                &end(ExecState::Succeeded, None, None, None, t0),
            )
            .await
            .unwrap();
        }
        let d = s
            .finish_job_device(
                id,
                &online(0),
                &end(
                    ExecState::Failed,
                    Some("ERROR"),
                    Some(r#"{"x":1}"#),
                    None,
                    t0,
                ),
            )
            .await
            .unwrap();
        assert_eq!(
            (d.state, d.error.as_deref(), d.result.as_deref()),
            (ExecState::Failed, Some("ERROR"), Some(r#"{"x":1}"#))
        );
        assert!(matches!(
            s.finish_job_device(
                id,
                &online(0),
                &end(ExecState::Succeeded, None, None, None, t0)
            )
            .await,
            Err(StoreError::Conflict { .. })
        ));
        // Conditional state moves.
        let j = s
            .set_job_state(
                id,
                &[JobState::Running],
                JobState::Paused,
                Some("by ops"),
                t0,
            )
            .await
            .unwrap();
        assert_eq!(
            (j.state, j.state_reason.as_deref(), j.finished_at),
            (JobState::Paused, Some("by ops"), None)
        );
        assert!(matches!(
            s.set_job_state(id, &[JobState::Running], JobState::Completed, None, t0)
                .await,
            Err(StoreError::Conflict { .. })
        ));
        let j = s
            .set_job_state(id, &[JobState::Paused], JobState::Cancelled, None, t0)
            .await
            .unwrap();
        assert_eq!(j.finished_at, Some(t0));
        assert_eq!(
            s.close_pending_job_devices(id, ExecState::Cancelled, t0)
                .await
                .unwrap(),
            1197
        );
        let p = s.job_progress(id).await.unwrap();
        assert_eq!(
            (p.failed, p.succeeded, p.cancelled, p.pending),
            (1, 2, 1197, 0)
        );
        assert_eq!(p.waves, vec![(200, 200), (1000, 1000)]);
        s.set_job_wave(id, 2).await.unwrap();
        assert_eq!(s.get_job(id).await.unwrap().current_wave, 2);
        // Listing: pages in rollout order, state filter; jobs newest first.
        let page = s
            .list_job_devices(&JobDeviceFilter {
                job_id: id,
                state: None,
                after_seq: None,
                limit: 1000,
            })
            .await
            .unwrap();
        assert_eq!(page.items.len(), 1000);
        assert_eq!(page.items[0].imei, online(0));
        let rest = s
            .list_job_devices(&JobDeviceFilter {
                job_id: id,
                state: None,
                after_seq: page.next.map(|n| n.parse().unwrap()),
                limit: 1000,
            })
            .await
            .unwrap();
        assert_eq!((rest.items.len(), rest.next), (200, None));
        let failed = s
            .list_job_devices(&JobDeviceFilter {
                job_id: id,
                state: Some(ExecState::Failed),
                after_seq: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(failed.items.len(), 1);
        let id2 = Uuid::now_v7();
        s.create_job(&NewJob {
            id: id2,
            devices: vec![(online(1), 1)],
            firmware_id: None,
            ..NewJob::clone(&NewJob {
                id: id2,
                name: None,
                operation: "{}".into(),
                target: "{}".into(),
                rollout: "{}".into(),
                restart: "never".into(),
                created_by: "ops".into(),
                created_at: t0,
                expires_at: t0,
                devices: vec![],
                firmware_id: None,
            })
        })
        .await
        .unwrap();
        let jobs = s
            .list_jobs(&JobFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            jobs.items.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![id2, id]
        );
        let unfinished = s.unfinished_jobs().await.unwrap();
        assert_eq!(
            unfinished.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![id2]
        );
        let dup = s
            .create_job(&NewJob {
                id: Uuid::now_v7(),
                name: None,
                operation: "{}".into(),
                target: "{}".into(),
                rollout: "{}".into(),
                restart: "auto".into(),
                created_by: "ops".into(),
                created_at: t0,
                expires_at: t0,
                devices: vec![(online(1), 1), (online(1), 1)],
                firmware_id: None,
            })
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict { .. })), "{dup:?}");
        assert!(matches!(
            s.get_job(Uuid::now_v7()).await,
            Err(StoreError::NotFound(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn session_targets_ownership_and_queue_count() {
    use callhome_core::targets::{Cidr, PortRange};
    on_each_backend("session_targets", |s| async move {
        assert!(s.list_session_targets().await.unwrap().is_empty());
        let key = Uuid::now_v7();
        let a = s
            .create_session_target(&NewSessionTarget {
                network: Cidr::parse("network", "10.20.0.0/16").unwrap(),
                ports: PortRange::parse("ports", "2000-2010").unwrap(),
                users: vec!["reading-centre".into()],
                api_keys: vec![key],
                note: Some("platform A".into()),
                created_by: "admin".into(),
            })
            .await
            .unwrap();
        let b = s
            .create_session_target(&NewSessionTarget {
                network: Cidr::parse("network", "2001:db8::/32").unwrap(),
                ports: PortRange::parse("ports", "502").unwrap(),
                users: vec![],
                api_keys: vec![],
                note: None,
                created_by: "admin".into(),
            })
            .await
            .unwrap();
        assert_eq!(a.network.to_string(), "10.20.0.0/16");
        assert_eq!((a.ports.first(), a.ports.last()), (2000, 2010));
        assert_eq!(a.users, vec!["reading-centre".to_string()]);
        assert_eq!(a.api_keys, vec![key]);
        assert_eq!(
            s.list_session_targets().await.unwrap(),
            vec![a.clone(), b.clone()]
        );
        let rule = a.rule();
        assert!(rule.network.contains("10.20.1.1".parse().unwrap()));
        assert_eq!(s.delete_session_target(a.id).await.unwrap(), a);
        assert!(matches!(
            s.delete_session_target(a.id).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(s.list_session_targets().await.unwrap(), vec![b]);

        // Sessions keep who opened them and the host name that was resolved.
        let d = registered(&s, 85).await;
        let owner = Uuid::now_v7();
        let sess = s
            .create_session(&NewSession {
                imei: d.clone(),
                mode: callhome_core::SessionMode::Direct,
                host: "10.20.0.5".into(),
                port: 2000,
                timeout_s: 60,
                pairing_timeout_s: 60,
                forward_id: false,
                token_hash: None,
                created_by: "apikey:a".into(),
                created_by_id: Some(owner),
                requested_host: Some("platform.example".into()),
            })
            .await
            .unwrap();
        let got = s.get_session(sess.id).await.unwrap();
        assert_eq!(got.created_by_id, Some(owner));
        assert_eq!(got.requested_host.as_deref(), Some("platform.example"));

        // The per-device queue count sees queued commands only.
        let now = OffsetDateTime::now_utc();
        let new = || NewCommand {
            imei: d.clone(),
            command: "AT".into(),
            created_by: "ops".into(),
            timeout_ms: 5000,
            expires_at: now + Duration::hours(1),
            max_attempts: 1,
        };
        assert_eq!(s.count_queued_commands(&d).await.unwrap(), 0);
        let c1 = s.enqueue_command(&new()).await.unwrap();
        s.enqueue_command(&new()).await.unwrap();
        s.enqueue_command(&new()).await.unwrap();
        assert_eq!(s.count_queued_commands(&d).await.unwrap(), 3);
        s.cancel_command(c1.id, now).await.unwrap();
        assert_eq!(s.count_queued_commands(&d).await.unwrap(), 2);
        assert_eq!(
            s.count_queued_commands(&registered(&s, 86).await)
                .await
                .unwrap(),
            0
        );
    })
    .await;
}

/// Secret Config.txt values are stored encrypted (a store opened without the key reads the
/// ciphertext), read back as written with the key, and a store opened with another key is
/// refused: on SQLite, and on PostgreSQL when configured.
#[tokio::test]
async fn secret_values_are_encrypted_and_the_master_key_is_checked() {
    let mut dbs = vec![TestDatabase::sqlite().unwrap()];
    if let Some(pg) = TestDatabase::postgres_from_env().await.unwrap() {
        dbs.push(pg);
    }
    for db in dbs {
        let key = MasterKey::generate();
        let with = |k: Option<MasterKey>| OpenOptions {
            master_key: k,
            ..OpenOptions::default()
        };
        let s = open(&db.url, &with(Some(key.clone()))).await.unwrap();
        let backend = s.backend();
        let dev = registered(&s, 31).await;
        let config = "GPRS_apn: x.apn\nGPRS_password: Suite-Gprs-1a2b\n";
        s.put_profile(&NewProfileVersion {
            name: "p".into(),
            tag: Some("t".into()),
            priority: 0,
            config: config.into(),
            by: "test".into(),
        })
        .await
        .unwrap();
        // As the fleet writes them (serde_json of a map: keys sorted, compact).
        let overrides = r#"{"DNS_period":"300","MTX_PIN":"9731"}"#;
        s.set_overrides(&dev, overrides, Some("MTX_PIN: 9731\n"), "test")
            .await
            .unwrap();
        s.set_reported(&dev, config, OffsetDateTime::now_utc())
            .await
            .unwrap();
        let cmd = "AT^MTXTUNNEL=SETPARAM,MQTT_password,Suite-Mqtt-3c4d";
        let queued = s
            .enqueue_command(&NewCommand {
                imei: dev.clone(),
                command: cmd.into(),
                created_by: "test".into(),
                timeout_ms: 1000,
                expires_at: OffsetDateTime::now_utc() + Duration::hours(1),
                max_attempts: 1,
            })
            .await
            .unwrap();
        assert_eq!(queued.command, cmd, "read back as written");
        let get = s
            .enqueue_command(&NewCommand {
                imei: dev.clone(),
                command: "AT^MTXTUNNEL=GETPARAM,MQTT_password".into(),
                created_by: "test".into(),
                timeout_ms: 1000,
                expires_at: OffsetDateTime::now_utc() + Duration::hours(1),
                max_attempts: 1,
            })
            .await
            .unwrap();
        for c in [&queued, &get] {
            s.mark_command_sent(c.id, OffsetDateTime::now_utc())
                .await
                .unwrap();
        }
        let reply = "Suite-Mqtt-3c4d\r\n\r\nOK";
        let done = s
            .complete_command(
                get.id,
                &CommandOutcome {
                    state: CommandState::Succeeded,
                    reply: Some(reply.into()),
                    result: Some("OK".into()),
                    error: None,
                    at: OffsetDateTime::now_utc(),
                },
            )
            .await
            .unwrap();
        assert_eq!(done.reply.as_deref(), Some(reply));
        s.close().await;

        // Without the key: what is stored.
        let raw = open(&db.url, &with(None)).await.unwrap();
        let p = raw.get_profile("p", None).await.unwrap();
        assert!(
            p.config
                .starts_with("GPRS_apn: x.apn\nGPRS_password: enc:v1:")
                && !p.config.contains("Suite-Gprs"),
            "{}",
            p.config
        );
        let dc = raw.get_device_config(&dev).await.unwrap();
        for text in [
            dc.overrides.as_str(),
            dc.document.as_deref().unwrap(),
            dc.reported.as_deref().unwrap(),
        ] {
            assert!(
                text.contains("enc:v1:") && !text.contains("9731") && !text.contains("Suite-"),
                "{text}"
            );
        }
        assert!(dc.overrides.contains(r#""DNS_period":"300""#));
        let c = raw.get_command(queued.id).await.unwrap();
        assert!(
            c.command
                .starts_with("AT^MTXTUNNEL=SETPARAM,MQTT_password,enc:v1:")
        );
        let g = raw.get_command(get.id).await.unwrap();
        let stored = g.reply.unwrap();
        assert!(
            stored.starts_with("enc:v1:") && stored.ends_with("\r\n\r\nOK"),
            "{stored}"
        );
        raw.close().await;

        // Another key: refused.
        let err = open(&db.url, &with(Some(MasterKey::generate())))
            .await
            .err()
            .expect("another key is refused");
        assert!(matches!(err, StoreError::MasterKey(_)), "{err:?}");

        // The key: everything as written.
        let s = open(&db.url, &with(Some(key))).await.unwrap();
        assert_eq!(s.get_profile("p", None).await.unwrap().config, config);
        let dc = s.get_device_config(&dev).await.unwrap();
        assert_eq!(dc.overrides, overrides);
        assert_eq!(dc.document.as_deref(), Some("MTX_PIN: 9731\n"));
        assert_eq!(dc.reported.as_deref(), Some(config));
        assert_eq!(s.get_command(queued.id).await.unwrap().command, cmd);
        assert_eq!(
            s.get_command(get.id).await.unwrap().reply.as_deref(),
            Some(reply)
        );
        s.close().await;
        db.cleanup().await.unwrap();
        println!("store suite: secrets at rest passed on {backend:?}");
    }
}

/// PostgreSQL TLS settings in the URL are honoured: `sslmode=verify-full` with an
/// `sslrootcert` that did not issue the server's certificate refuses to connect (where
/// `sslmode=require`, which does not verify, connects), so a verify-full URL never falls back
/// to an unverified or plaintext connection.
#[tokio::test]
async fn postgres_verify_full_is_honoured() {
    use std::str::FromStr as _;
    let opts = sqlx::postgres::PgConnectOptions::from_str(
        "postgres://u@db.example/x?sslmode=verify-full&sslrootcert=/etc/callhome/pg-ca.pem",
    )
    .unwrap();
    assert!(matches!(
        opts.get_ssl_mode(),
        sqlx::postgres::PgSslMode::VerifyFull
    ));
    let Ok(server) = std::env::var(testing::TEST_DATABASE_URL) else {
        println!("store suite: verify-full against a server skipped (no TEST_DATABASE_URL)");
        return;
    };
    let sep = if server.contains('?') { '&' } else { '?' };
    // A CA that issued nothing the server has.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("other-ca.pem");
    let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
    let verify = format!(
        "{server}{sep}sslmode=verify-full&sslrootcert={}",
        ca.display()
    );
    let err = open(&verify, &OpenOptions::default())
        .await
        .err()
        .expect("verify-full with a CA that did not issue the server's certificate fails");
    println!("store suite: verify-full refused: {err}");
    let require = format!("{server}{sep}sslmode=require");
    match open(&require, &OpenOptions::default()).await {
        Ok(s) => s.close().await,
        // A server without TLS: verify-full was refused for that reason instead; still no
        // fallback.
        Err(e) => println!("store suite: the server has no TLS ({e})"),
    }
}

/// A password change, disabling and "revoke tokens" each raise the token version; a role
/// change alone does not.
#[tokio::test]
async fn token_version_rises_on_password_change_disable_and_revoke() {
    on_each_backend("token_version", |s| async move {
        let u = s
            .create_user(&NewUser {
                username: "carol".into(),
                password_hash: "$argon2id$a".into(),
                role: Role::Operator,
            })
            .await
            .unwrap();
        assert_eq!(u.token_version, 0);
        let role_only = UserPatch {
            role: Some(Role::Reader),
            ..Default::default()
        };
        assert_eq!(
            s.update_user(u.id, &role_only).await.unwrap().token_version,
            0
        );
        let enable = UserPatch {
            disabled: Some(false),
            ..Default::default()
        };
        assert_eq!(s.update_user(u.id, &enable).await.unwrap().token_version, 0);
        let password = UserPatch {
            password_hash: Some("$argon2id$b".into()),
            ..Default::default()
        };
        let changed = s.update_user(u.id, &password).await.unwrap();
        assert_eq!(
            (changed.token_version, changed.password_hash.as_str()),
            (1, "$argon2id$b")
        );
        let disable = UserPatch {
            disabled: Some(true),
            ..Default::default()
        };
        assert_eq!(
            s.update_user(u.id, &disable).await.unwrap().token_version,
            2
        );
        let revoked = s.revoke_user_tokens(u.id).await.unwrap();
        assert_eq!(revoked.token_version, 3);
        assert_eq!(s.get_user(u.id).await.unwrap().token_version, 3);
        assert!(matches!(
            s.revoke_user_tokens(Uuid::new_v4()).await,
            Err(StoreError::NotFound(_))
        ));
    })
    .await;
}

/// Retention: each prune call deletes at most its batch of rows older than the cutoff, and
/// never rows still in use (queued or sent commands, open sessions, running jobs).
#[tokio::test]
async fn retention_prunes_old_rows_in_batches_and_keeps_rows_in_use() {
    use callhome_core::jobs::JobState;
    on_each_backend("retention", |s| async move {
        let now = OffsetDateTime::now_utc();
        let old = now - Duration::days(400);
        // Audit: 25 old rows, 3 recent ones.
        for i in 0..28 {
            s.append_audit(&NewAuditEntry {
                at: if i < 25 { old } else { now },
                actor: "admin".into(),
                actor_kind: callhome_core::ActorKind::User,
                action: "POST /api/v1/devices".into(),
                target: Some(format!("t{i}")),
                outcome: callhome_core::AuditOutcome::Success,
                status: Some(201),
                detail: None,
                remote_addr: None,
                request_id: None,
            })
            .await
            .unwrap();
        }
        let cutoff = now - Duration::days(365);
        assert_eq!(s.prune_audit(cutoff, 10).await.unwrap(), 10);
        assert_eq!(s.prune_audit(cutoff, 10).await.unwrap(), 10);
        assert_eq!(s.prune_audit(cutoff, 10).await.unwrap(), 5);
        assert_eq!(s.prune_audit(cutoff, 10).await.unwrap(), 0);
        let left = s
            .list_audit(&AuditFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(left.items.len(), 3, "the recent rows stay");

        // Commands: finished ones go, queued and sent ones stay (whatever their age).
        let d = registered(&s, 9500).await;
        let new = |cmd: &str| NewCommand {
            imei: d.clone(),
            command: cmd.into(),
            created_by: "ops".into(),
            timeout_ms: 5000,
            expires_at: now + Duration::hours(1),
            max_attempts: 1,
        };
        let mut finished = Vec::new();
        for _ in 0..3 {
            let c = s.enqueue_command(&new("AT")).await.unwrap();
            s.mark_command_sent(c.id, now).await.unwrap();
            s.complete_command(
                c.id,
                &CommandOutcome {
                    state: CommandState::Succeeded,
                    reply: Some("OK".into()),
                    result: Some("OK".into()),
                    error: None,
                    at: now,
                },
            )
            .await
            .unwrap();
            finished.push(c.id);
        }
        let queued = s.enqueue_command(&new("ATI")).await.unwrap();
        let sent = s.enqueue_command(&new("AT+CSQ")).await.unwrap();
        s.mark_command_sent(sent.id, now).await.unwrap();
        // A cutoff before their creation keeps everything.
        assert_eq!(s.prune_commands(old, 10).await.unwrap(), 0);
        let later = now + Duration::hours(1);
        assert_eq!(s.prune_commands(later, 2).await.unwrap(), 2);
        assert_eq!(s.prune_commands(later, 2).await.unwrap(), 1);
        assert_eq!(s.prune_commands(later, 2).await.unwrap(), 0);
        for id in finished {
            assert!(matches!(
                s.get_command(id).await,
                Err(StoreError::NotFound(_))
            ));
        }
        assert_eq!(
            s.get_command(queued.id).await.unwrap().state,
            CommandState::Queued
        );
        assert_eq!(
            s.get_command(sent.id).await.unwrap().state,
            CommandState::Sent
        );

        // Sessions: closed long ago goes; the open one stays.
        let open_session = |imei: Imei| NewSession {
            imei,
            mode: callhome_core::SessionMode::Direct,
            host: "10.0.0.1".into(),
            port: 5000,
            timeout_s: 60,
            pairing_timeout_s: 60,
            forward_id: false,
            token_hash: None,
            created_by: "t".into(),
            created_by_id: None,
            requested_host: None,
        };
        let closed = s.create_session(&open_session(d.clone())).await.unwrap();
        s.update_session(
            closed.id,
            &SessionUpdate {
                state: Some(SessionState::Closed),
                close_reason: Some(callhome_core::CloseReason::ReaderClosed),
                closed_at: Some(old),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let still_open = s.create_session(&open_session(d.clone())).await.unwrap();
        assert_eq!(s.prune_sessions(cutoff, 10).await.unwrap(), 1);
        assert_eq!(s.prune_sessions(later, 10).await.unwrap(), 0);
        assert!(matches!(
            s.get_session(closed.id).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            s.get_session(still_open.id).await.unwrap().state,
            SessionState::Requested
        );

        // Jobs: a finished one goes, its executions first, a batch at a time; a running one
        // stays.
        let mut devices = Vec::new();
        for n in 0..5 {
            devices.push((registered(&s, 9600 + n).await, 1));
        }
        let job = |id: Uuid| NewJob {
            id,
            name: None,
            operation: r#"{"type":"reboot"}"#.into(),
            target: r#"{"tag_expr":"a"}"#.into(),
            rollout: "{}".into(),
            restart: "auto".into(),
            created_by: "ops".into(),
            created_at: old,
            expires_at: old + Duration::hours(1),
            devices: devices.clone(),
            firmware_id: None,
        };
        let done = s.create_job(&job(Uuid::now_v7())).await.unwrap();
        s.set_job_state(
            done.id,
            &[JobState::Running],
            JobState::Cancelled,
            None,
            old,
        )
        .await
        .unwrap();
        let running = s.create_job(&job(Uuid::now_v7())).await.unwrap();
        assert_eq!(
            s.prune_jobs(cutoff, 3).await.unwrap(),
            3,
            "executions first"
        );
        assert_eq!(s.prune_jobs(cutoff, 3).await.unwrap(), 2);
        assert_eq!(s.prune_jobs(cutoff, 3).await.unwrap(), 1, "then the job");
        assert_eq!(s.prune_jobs(cutoff, 3).await.unwrap(), 0);
        assert!(matches!(
            s.get_job(done.id).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            s.get_job(running.id).await.unwrap().state,
            JobState::Running
        );
        assert_eq!(s.job_progress(running.id).await.unwrap().total, 5);
    })
    .await;
}

#[tokio::test]
async fn firmware_repository_inventory_downloads_and_event_log() {
    use callhome_core::firmware::{ExecEventKind, FirmwareKind, UpdateOutcome};
    use callhome_core::jobs::ExecState;
    on_each_backend("firmware", |s| async move {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let fw = FirmwareRecord {
            id: Uuid::now_v7(),
            version: "2.0.0".into(),
            models: vec!["EHS6".into(), "TC65i".into()],
            kind: FirmwareKind::Image,
            notes: Some("fixes".into()),
            min_version: Some("1.0".into()),
            sha256: "ab".repeat(32),
            size: 1_048_576,
            signed_by: Some("release-2026".into()),
            jad: None,
            created_at: t0,
            created_by: "ops".into(),
        };
        assert_eq!(s.create_firmware(&fw).await.unwrap(), fw);
        assert_eq!(s.get_firmware(fw.id).await.unwrap(), fw);
        // The same file again is a conflict naming the firmware that has it.
        let dup = s
            .create_firmware(&FirmwareRecord {
                id: Uuid::now_v7(),
                version: "2.0.1".into(),
                ..fw.clone()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&dup, StoreError::Conflict { .. })
                && dup.to_string().contains(&fw.id.to_string()),
            "{dup}"
        );
        let other = FirmwareRecord {
            id: Uuid::now_v7(),
            sha256: "cd".repeat(32),
            kind: FirmwareKind::Midlet,
            jad: Some("MIDlet-Name: MTX\n".into()),
            ..fw.clone()
        };
        s.create_firmware(&other).await.unwrap();
        let page = s.list_firmware(None, 1).await.unwrap();
        assert_eq!(page.items[0].id, other.id, "newest first");
        let next = page.next.unwrap().parse().unwrap();
        assert_eq!(
            s.list_firmware(Some(next), 10).await.unwrap().items[0].id,
            fw.id
        );
        assert_eq!(
            s.firmware_by_sha256(&fw.sha256).await.unwrap().unwrap().id,
            fw.id
        );
        assert!(
            s.firmware_by_sha256(&"ef".repeat(32))
                .await
                .unwrap()
                .is_none()
        );

        // Inventory: a report that changes something is kept in the history, one that does not is not.
        let a = registered(&s, 1).await;
        let b = registered(&s, 2).await;
        assert_eq!(
            s.report_device_firmware(&a, Some("EHS6"), Some("1.9"), "status", t0)
                .await
                .unwrap(),
            Some((None, None))
        );
        assert_eq!(
            s.report_device_firmware(&a, Some("EHS6"), Some("1.9"), "status", t0)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            s.report_device_firmware(
                &a,
                None,
                Some("2.0.0"),
                "version",
                t0 + Duration::minutes(1)
            )
            .await
            .unwrap(),
            Some((Some("1.9".into()), Some("EHS6".into())))
        );
        s.report_device_firmware(&b, Some("BGS2"), Some("1.9"), "status", t0)
            .await
            .unwrap();
        let d = s.get_device(&a).await.unwrap();
        assert_eq!(
            (d.model.as_deref(), d.firmware_version.as_deref()),
            (Some("EHS6"), Some("2.0.0"))
        );
        let history = s.device_firmware_history(&a, 10).await.unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(
            (history[0].version.as_deref(), history[0].source.as_str()),
            (Some("2.0.0"), "version")
        );
        let dist = s.firmware_distribution().await.unwrap();
        assert!(dist.iter().any(|r| r.model.as_deref() == Some("EHS6")
            && r.version.as_deref() == Some("2.0.0")
            && r.devices == 1));
        assert!(
            dist.iter()
                .any(|r| r.model.as_deref() == Some("BGS2") && r.devices == 1)
        );
        let by_fw = s
            .list_devices(&DeviceFilter {
                firmware: Some("1.9".into()),
                model: Some("bgs2".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(by_fw.items.len(), 1);
        assert_eq!(by_fw.items[0].imei, b);

        // A campaign uses the firmware: it cannot be deleted while the campaign runs.
        let job = Uuid::now_v7();
        s.create_job(&NewJob {
            id: job,
            name: None,
            operation: format!(
                r#"{{"type":"firmware_update","firmware_id":"{}","force":false}}"#,
                fw.id
            ),
            target: r#"{"imeis":[]}"#.into(),
            rollout: "{}".into(),
            restart: "auto".into(),
            created_by: "ops".into(),
            created_at: t0,
            expires_at: t0 + Duration::hours(1),
            devices: vec![(a.clone(), 1), (b.clone(), 1)],
            firmware_id: Some(fw.id),
        })
        .await
        .unwrap();
        let busy = s.delete_firmware(fw.id).await.unwrap_err();
        assert!(busy.to_string().contains(&job.to_string()), "{busy}");
        assert_eq!(s.delete_firmware(other.id).await.unwrap().id, other.id);
        assert!(matches!(
            s.get_firmware(other.id).await,
            Err(StoreError::NotFound(_))
        ));

        // Download tokens: one per execution attempt; creating it again returns the same one.
        let new = NewDownload {
            token_hash: "11".repeat(32),
            token: "secret-token".into(),
            job_id: job,
            imei: a.clone(),
            attempt: 1,
            firmware_id: fw.id,
            at: t0,
            expires_at: t0 + Duration::hours(1),
        };
        let d1 = s.create_download(&new).await.unwrap();
        assert_eq!(d1.token, "secret-token");
        let again = s
            .create_download(&NewDownload {
                token_hash: "22".repeat(32),
                token: "another".into(),
                ..new.clone()
            })
            .await
            .unwrap();
        assert_eq!(again.token_hash, d1.token_hash);
        assert_eq!(
            s.download_of(job, &a, 1).await.unwrap().unwrap().token,
            "secret-token"
        );
        // The first response wrote the whole file, but the modem kept only 500,000 bytes
        // (it resumes there): the tail counts once, and the completion waits for the end.
        let all = DownloadProgress {
            start: 0,
            bytes: 1_048_576,
            resumed: false,
            completed: true,
            at: t0,
        };
        let d = s.record_download(&d1.token_hash, &all).await.unwrap();
        assert_eq!(d.completed_at, Some(t0));
        let rest = DownloadProgress {
            start: 500_000,
            bytes: 548_576,
            resumed: true,
            completed: false,
            at: t0 + Duration::seconds(3),
        };
        let d = s.record_download(&d1.token_hash, &rest).await.unwrap();
        assert_eq!(
            (d.requests, d.resumptions, d.bytes_served),
            (2, 1, 1_048_576)
        );
        assert_eq!(d.completed_at, None, "the modem did not have it all");
        let tail = DownloadProgress {
            start: 1_000_000,
            bytes: 48_576,
            resumed: true,
            completed: true,
            at: t0 + Duration::seconds(5),
        };
        let d = s.record_download(&d1.token_hash, &tail).await.unwrap();
        assert_eq!(
            (d.requests, d.resumptions, d.bytes_served),
            (3, 2, 1_048_576)
        );
        assert_eq!(d.completed_at, Some(t0 + Duration::seconds(5)));
        s.record_download_refusal(&d1.token_hash, "403 another device")
            .await
            .unwrap();
        let d = s
            .record_install_notify(&d1.token_hash, 900, "Success", t0)
            .await
            .unwrap();
        assert_eq!(
            (d.notify_code, d.refused.as_deref()),
            (Some(900), Some("403 another device"))
        );
        s.close_downloads(job, &a, t0).await.unwrap();
        assert_eq!(
            s.get_download(&d1.token_hash).await.unwrap().closed_at,
            Some(t0)
        );
        assert!(matches!(
            s.get_download(&"33".repeat(32)).await,
            Err(StoreError::NotFound(_))
        ));

        // The event log, oldest first.
        s.append_job_event(job, &a, ExecEventKind::DownloadStarted, None, t0)
            .await
            .unwrap();
        s.append_job_event(
            job,
            &a,
            ExecEventKind::InstallNotified,
            Some(r#"{"code":900}"#),
            t0,
        )
        .await
        .unwrap();
        let events = s.list_job_events(job, &a).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [
                ExecEventKind::DownloadStarted,
                ExecEventKind::InstallNotified
            ]
        );
        assert_eq!(events[1].detail.as_deref(), Some(r#"{"code":900}"#));
        assert!(s.list_job_events(job, &b).await.unwrap().is_empty());

        // Skipped executions carry their outcome and count apart.
        s.start_job_devices(job, &[a.clone(), b.clone()], t0)
            .await
            .unwrap();
        s.finish_job_device(
            job,
            &b,
            &end(
                ExecState::Skipped,
                Some("model BGS2"),
                None,
                Some(UpdateOutcome::Incompatible),
                t0,
            ),
        )
        .await
        .unwrap();
        let rec = s
            .finish_job_device(
                job,
                &a,
                &end(
                    ExecState::Succeeded,
                    None,
                    None,
                    Some(UpdateOutcome::Updated),
                    t0,
                ),
            )
            .await
            .unwrap();
        assert_eq!(rec.outcome, Some(UpdateOutcome::Updated));
        assert_eq!(
            s.get_job_device(job, &b).await.unwrap().outcome,
            Some(UpdateOutcome::Incompatible)
        );
        let p = s.job_progress(job).await.unwrap();
        assert_eq!((p.succeeded, p.skipped, p.waves[0]), (1, 1, (2, 2)));
    })
    .await;
}

#[tokio::test]
async fn bootstrap_secrets_are_single_use_replaced_and_expire() {
    on_each_backend("bootstrap secrets", |s| async move {
        let id = registered(&s, 901).await;
        let now = OffsetDateTime::now_utc();
        let secret = |hash: &str, expires_at: OffsetDateTime| BootstrapSecret {
            imei: id.clone(),
            secret_hash: hash.to_owned(),
            expires_at,
            created_at: now,
            created_by: "ops".to_owned(),
        };
        assert_eq!(s.get_bootstrap_secret(&id).await.unwrap(), None);
        assert!(!s.delete_bootstrap_secret(&id).await.unwrap());

        // A new secret replaces the old one: the old hash no longer consumes anything.
        s.put_bootstrap_secret(&secret("h1", now + Duration::days(1)))
            .await
            .unwrap();
        s.put_bootstrap_secret(&secret("h2", now + Duration::days(2)))
            .await
            .unwrap();
        let stored = s.get_bootstrap_secret(&id).await.unwrap().unwrap();
        assert_eq!(stored.secret_hash, "h2");
        assert_eq!(stored.created_by, "ops");
        assert_eq!(
            stored.expires_at.unix_timestamp(),
            (now + Duration::days(2)).unix_timestamp()
        );
        assert!(!s.consume_bootstrap_secret(&id, "h1", now).await.unwrap());

        // Single use: of two consumers racing, exactly one wins.
        let (a, b) = tokio::join!(
            s.consume_bootstrap_secret(&id, "h2", now),
            s.consume_bootstrap_secret(&id, "h2", now)
        );
        assert!(a.unwrap() ^ b.unwrap(), "exactly one consumer wins");
        assert_eq!(s.get_bootstrap_secret(&id).await.unwrap(), None);

        // A consumed secret can be put back, but never over a newer one.
        assert!(s.restore_bootstrap_secret(&stored).await.unwrap());
        s.put_bootstrap_secret(&secret("h3", now + Duration::days(1)))
            .await
            .unwrap();
        assert!(!s.restore_bootstrap_secret(&stored).await.unwrap());
        assert_eq!(
            s.get_bootstrap_secret(&id)
                .await
                .unwrap()
                .unwrap()
                .secret_hash,
            "h3"
        );

        // An expired secret is kept (to say "expired") but not consumed.
        s.put_bootstrap_secret(&secret("h4", now - Duration::seconds(1)))
            .await
            .unwrap();
        assert!(!s.consume_bootstrap_secret(&id, "h4", now).await.unwrap());
        assert!(s.get_bootstrap_secret(&id).await.unwrap().is_some());

        // Withdrawn, and gone with its device.
        assert!(s.delete_bootstrap_secret(&id).await.unwrap());
        assert!(!s.delete_bootstrap_secret(&id).await.unwrap());
        s.put_bootstrap_secret(&secret("h5", now + Duration::days(1)))
            .await
            .unwrap();
        s.delete_device(&id).await.unwrap();
        assert_eq!(s.get_bootstrap_secret(&id).await.unwrap(), None);

        // A secret for an unregistered device is refused by the database.
        assert!(
            s.put_bootstrap_secret(&secret("h6", now + Duration::days(1)))
                .await
                .is_err()
        );
    })
    .await;
}

/// A certificate of device `n` issued `age` ago, expiring in `days`.
fn issued(
    serial: &str,
    n: u64,
    age: Duration,
    days: i64,
    now: OffsetDateTime,
) -> CertificateRecord {
    CertificateRecord {
        serial: serial.into(),
        imei: imei(n),
        common_name: imei(n).to_string(),
        fingerprint_sha256: format!("fp{serial}"),
        certificate_pem: format!("pem of {serial}"),
        not_before: now - age,
        not_after: now + Duration::days(days),
        issued_by: "ops".into(),
        created_at: now - age,
        revocation: None,
    }
}

#[tokio::test]
async fn certificate_watch_listing_notices_and_audit_queries() {
    on_each_backend("certificate watch", |s| async move {
        let now = OffsetDateTime::now_utc().replace_millisecond(0).unwrap();
        let hour = Duration::hours(1);
        for n in 1..=4 {
            registered(&s, n).await;
        }
        // Device 1: an old certificate (10 days left) renewed by a newer one (100 days left).
        // Device 2: one certificate, 20 days left. Device 3: 5 days left, revoked.
        // Device 4: one expired yesterday and a newer one with 45 days left.
        let certs = [
            issued("A1", 1, Duration::days(400), 10, now),
            issued("A2", 1, hour, 100, now),
            issued("B1", 2, Duration::days(10), 20, now),
            issued("C1", 3, Duration::days(10), 5, now),
            issued("D1", 4, Duration::days(10), -1, now),
            issued("D2", 4, Duration::days(3), 45, now),
        ];
        for c in &certs {
            s.insert_certificate(c).await.unwrap();
        }
        s.revoke_certificate(
            "C1",
            &Revocation {
                at: now,
                reason: None,
                by: "ops".into(),
            },
        )
        .await
        .unwrap();
        let list = |state: Option<CertificateState>,
                    within: Option<i64>,
                    dev: Option<u64>,
                    after: Option<(OffsetDateTime, String)>,
                    limit: u32| {
            let s = s.clone();
            async move {
                s.list_all_certificates(&CertificateFilter {
                    now,
                    expiring_before: within.map(|d| now + Duration::days(d)),
                    state,
                    imei: dev.map(imei),
                    after,
                    limit,
                })
                .await
                .unwrap()
            }
        };
        let serials = |p: &Page<CertificateRecord>| {
            p.items.iter().map(|c| c.serial.clone()).collect::<Vec<_>>()
        };
        // Everything, expiring soonest first.
        let all = list(None, None, None, None, 100).await;
        assert_eq!(serials(&all), ["D1", "C1", "A1", "B1", "D2", "A2"]);
        assert!(all.next.is_none());
        // Filters.
        assert_eq!(
            serials(&list(Some(CertificateState::Active), Some(30), None, None, 100).await),
            ["A1", "B1"]
        );
        assert_eq!(
            serials(&list(None, Some(30), None, None, 100).await),
            ["C1", "A1", "B1"],
            "expiring within a window: not already expired"
        );
        assert_eq!(
            serials(&list(Some(CertificateState::Revoked), None, None, None, 100).await),
            ["C1"]
        );
        assert_eq!(
            serials(&list(Some(CertificateState::Expired), None, None, None, 100).await),
            ["D1"]
        );
        assert_eq!(
            serials(&list(None, None, Some(4), None, 100).await),
            ["D1", "D2"]
        );
        // Paging two at a time walks the same order, without gaps or repeats.
        let mut walked = Vec::new();
        let mut after = None;
        loop {
            let p = list(None, None, None, after.clone(), 2).await;
            walked.extend(serials(&p));
            match p.next {
                Some(c) => after = Some(parse_certificate_cursor(&c).expect("own cursor")),
                None => break,
            }
        }
        assert_eq!(walked, serials(&all));
        assert!(parse_certificate_cursor("x:0A").is_none());
        assert!(parse_certificate_cursor("12:zz").is_none());

        // Expiry candidates within 60 days: not A1 (renewed by A2), not C1 (revoked), not
        // D1 (expired); B1 and D2 (D2 is device 4's newest).
        let cands = s
            .expiry_candidates(now, now + Duration::days(60))
            .await
            .unwrap();
        assert_eq!(
            cands
                .iter()
                .map(|c| c.cert.serial.as_str())
                .collect::<Vec<_>>(),
            ["B1", "D2"]
        );
        assert!(cands.iter().all(|c| c.tightest_noticed.is_none()));
        // Notices: recorded once, even when two callers race.
        let (a, b) = tokio::join!(
            s.record_expiry_notice("B1", 30, true, now),
            s.record_expiry_notice("B1", 30, true, now)
        );
        assert!(a.unwrap() ^ b.unwrap(), "exactly one insert wins");
        assert!(s.record_expiry_notice("B1", 60, false, now).await.unwrap());
        assert!(!s.record_expiry_notice("B1", 60, true, now).await.unwrap());
        assert_eq!(
            s.expiry_notices("B1").await.unwrap(),
            vec![(60, false), (30, true)]
        );
        let cands = s
            .expiry_candidates(now, now + Duration::days(60))
            .await
            .unwrap();
        assert_eq!(cands[0].tightest_noticed, Some(30));

        // Counts (the gauges).
        assert_eq!(
            s.count_expiring(now, &[60, 30, 7]).await.unwrap(),
            vec![3, 2, 0],
            "active: A1 (10), B1 (20), D2 (45); A2 at 100 days is outside"
        );
        assert_eq!(
            s.count_certificates(now).await.unwrap(),
            CertificateCounts {
                active: 4,
                revoked: 1,
                expired: 1
            }
        );

        // The device view's certificate: the live connection's, else the newest active.
        let active = |n: u64, pref: Option<&'static str>| {
            let s = s.clone();
            async move {
                s.active_certificate(&imei(n), pref, now)
                    .await
                    .unwrap()
                    .map(|c| c.serial)
            }
        };
        assert_eq!(active(1, None).await.as_deref(), Some("A2"));
        assert_eq!(active(1, Some("A1")).await.as_deref(), Some("A1"));
        assert_eq!(active(1, Some("C1")).await.as_deref(), Some("A2"));
        assert_eq!(active(3, None).await, None, "revoked only");

        // Public-key hashes: none computed yet. A1 and B1 (two devices) and the revoked C1
        // share one key; A2's and D2's PEMs "did not parse" (empty hash).
        let missing = s.certificates_without_public_key(100).await.unwrap();
        assert_eq!(missing.len(), 6);
        assert_eq!(missing[0], ("A1".to_owned(), "pem of A1".to_owned()));
        for (serial, key) in [
            ("A1", "k1"),
            ("B1", "k1"),
            ("A2", ""),
            ("C1", "k1"),
            ("D1", "k3"),
            ("D2", ""),
        ] {
            s.set_certificate_public_key(serial, key).await.unwrap();
        }
        assert!(
            s.certificates_without_public_key(100)
                .await
                .unwrap()
                .is_empty()
        );
        let shared = s.shared_key_certificates(now).await.unwrap();
        assert_eq!(
            shared
                .iter()
                .map(|c| (c.serial.as_str(), c.public_key_sha256.as_deref()))
                .collect::<Vec<_>>(),
            [("A1", Some("k1")), ("B1", Some("k1"))],
            "revoked C1 is left out; empty hashes never match"
        );
        // Device 1 holds two active certificates; its newest is an hour old.
        let multi = s
            .multiple_active_certificates(now, now - Duration::days(7))
            .await
            .unwrap();
        assert!(multi.is_empty(), "within the overlap");
        let multi = s
            .multiple_active_certificates(now, now - Duration::minutes(1))
            .await
            .unwrap();
        assert_eq!(
            multi.iter().map(|c| c.serial.as_str()).collect::<Vec<_>>(),
            ["A2", "A1"]
        );
        // Live connections with a revoked or expired certificate.
        assert!(
            s.connected_invalid_certificates(now)
                .await
                .unwrap()
                .is_empty()
        );
        for (n, serial) in [(1, "A2"), (3, "C1"), (4, "D1")] {
            s.mark_online(
                &imei(n),
                &OnlineRecord {
                    session_id: format!("n1-{n}"),
                    at: now,
                    remote_addr: "127.0.0.1:1".into(),
                    cert_serial: Some(serial.into()),
                },
            )
            .await
            .unwrap();
        }
        s.mark_offline(&imei(4), "n1-4", now).await.unwrap();
        let bad = s.connected_invalid_certificates(now).await.unwrap();
        assert_eq!(
            bad.iter()
                .map(|c| (c.imei.clone(), c.serial.as_str()))
                .collect::<Vec<_>>(),
            [(imei(3), "C1")],
            "device 4 is offline; device 1's certificate is active"
        );
    })
    .await;
}

fn claim(name: &str, policy: callhome_core::claims::ClaimPolicy) -> ClaimRecord {
    ClaimRecord {
        id: Uuid::now_v7(),
        name: name.to_owned(),
        kind: callhome_core::claims::ClaimKind::Issued,
        certificate_pem: "-----BEGIN CERTIFICATE-----".to_owned(),
        fingerprint_sha256: format!("fp-{name}"),
        serial: Some(format!("SERIAL-{name}")),
        policy,
        enrollments_used: 0,
        created_at: OffsetDateTime::now_utc(),
        created_by: "admin".to_owned(),
        revoked_at: None,
        revoked_by: None,
    }
}

fn enrollment(
    claim_id: Uuid,
    n: u64,
    state: callhome_core::claims::EnrollmentState,
) -> EnrollmentRecord {
    EnrollmentRecord {
        id: Uuid::now_v7(),
        claim_id,
        imei: imei(n),
        state,
        csr_pem: "csr".to_owned(),
        public_key_sha256: format!("key-{n}"),
        requested_at: OffsetDateTime::now_utc(),
        remote_addr: Some("192.0.2.1".to_owned()),
        decided_at: None,
        decided_by: None,
        reason: None,
        certificate_serial: None,
    }
}

#[tokio::test]
async fn claims_count_enrolments_race_free_and_decide_once() {
    use callhome_core::claims::{
        AUTO_APPROVER, Approval, ClaimPolicy, EnrollmentState as S, ImeiPolicy,
    };
    on_each_backend("claims", |s| async move {
        // Whole seconds: stored times keep milliseconds.
        let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap();
        let policy = |max: i64, approval: Approval| ClaimPolicy {
            imeis: ImeiPolicy::Range { from: imei(1), to: imei(500) },
            expires_at: now + Duration::days(30),
            max_enrollments: max,
            approval,
        };
        let listed = ClaimPolicy {
            imeis: ImeiPolicy::List(vec![imei(1), imei(2)]),
            ..policy(5, Approval::Auto)
        };
        let a = s.create_claim(&claim("batch-a", listed.clone())).await.unwrap();
        assert_eq!(a.policy, listed);
        assert_eq!(s.get_claim(a.id).await.unwrap(), a);
        assert_eq!(
            s.claim_by_serial("SERIAL-batch-a").await.unwrap().map(|c| c.id),
            Some(a.id)
        );
        assert_eq!(s.claim_by_serial("nope").await.unwrap(), None);
        let dup = s.create_claim(&claim("batch-a", listed.clone())).await;
        assert!(matches!(dup, Err(StoreError::Conflict { detail, .. }) if detail.contains("batch-a")));

        // The last slot goes to one of two concurrent enrolments only.
        let b = s.create_claim(&claim("batch-b", policy(2, Approval::Manual))).await.unwrap();
        let first = s
            .create_enrollment(&enrollment(b.id, 1, S::Pending), now)
            .await
            .unwrap()
            .unwrap();
        let (e2, e3) = (enrollment(b.id, 2, S::Pending), enrollment(b.id, 3, S::Pending));
        let (x, y) = tokio::join!(s.create_enrollment(&e2, now), s.create_enrollment(&e3, now));
        assert!(
            x.unwrap().is_some() ^ y.unwrap().is_some(),
            "exactly one gets the last slot"
        );
        assert_eq!(s.get_claim(b.id).await.unwrap().enrollments_used, 2);

        // One live enrolment per IMEI and claim.
        let c = s.create_claim(&claim("batch-c", policy(10, Approval::Manual))).await.unwrap();
        s.create_enrollment(&enrollment(c.id, 7, S::Pending), now).await.unwrap().unwrap();
        let again = s.create_enrollment(&enrollment(c.id, 7, S::Pending), now).await;
        assert!(matches!(again, Err(StoreError::Conflict { .. })), "{again:?}");
        assert_eq!(s.get_claim(c.id).await.unwrap().enrollments_used, 1, "the failed insert gave its slot back");

        // Deciding: once; a rejection gives the slot back; the pending list.
        let pending = s
            .list_enrollments(&EnrollmentFilter { state: Some(S::Pending), claim_id: Some(b.id), before: None, limit: 10 })
            .await
            .unwrap();
        assert_eq!(pending.items.len(), 2);
        let approved = s.decide_enrollment(first.id, S::Approved, "op", now, None).await.unwrap();
        assert_eq!((approved.state, approved.decided_by.as_deref()), (S::Approved, Some("op")));
        let replay = s.decide_enrollment(first.id, S::Approved, "op", now, None).await;
        assert!(matches!(replay, Err(StoreError::Conflict { detail, .. }) if detail.contains("already approved")));
        let issued = s.finish_enrollment(first.id, "ABC").await.unwrap();
        assert_eq!((issued.state, issued.certificate_serial.as_deref()), (S::Issued, Some("ABC")));
        assert!(s.finish_enrollment(first.id, "ABC").await.is_err());
        let other = pending.items.iter().find(|e| e.id != first.id).unwrap();
        let rejected = s
            .decide_enrollment(other.id, S::Rejected, "op", now, Some("not ours"))
            .await
            .unwrap();
        assert_eq!(rejected.reason.as_deref(), Some("not ours"));
        assert_eq!(s.get_claim(b.id).await.unwrap().enrollments_used, 1);
        assert_eq!(
            s.latest_enrollment(b.id, &other.imei).await.unwrap().map(|e| e.state),
            Some(S::Rejected)
        );

        // An automatic approval that could not be issued is undone (slot back); an
        // operator's goes back to pending.
        let mut auto = enrollment(a.id, 1, S::Approved);
        auto.decided_by = Some(AUTO_APPROVER.to_owned());
        let auto = s.create_enrollment(&auto, now).await.unwrap().unwrap();
        s.undo_approval(auto.id).await.unwrap();
        assert!(matches!(s.get_enrollment(auto.id).await, Err(StoreError::NotFound(_))));
        assert_eq!(s.get_claim(a.id).await.unwrap().enrollments_used, 0);
        let held = s.create_enrollment(&enrollment(c.id, 8, S::Pending), now).await.unwrap().unwrap();
        s.decide_enrollment(held.id, S::Approved, "op", now, None).await.unwrap();
        s.undo_approval(held.id).await.unwrap();
        assert_eq!(s.get_enrollment(held.id).await.unwrap().state, S::Pending);

        // Revoked or expired claims give no slot; revocation is once; the CRL list.
        s.revoke_claim(c.id, now, "admin").await.unwrap();
        assert!(matches!(s.revoke_claim(c.id, now, "admin").await, Err(StoreError::Conflict { .. })));
        assert_eq!(s.create_enrollment(&enrollment(c.id, 9, S::Pending), now).await.unwrap(), None);
        assert_eq!(
            s.create_enrollment(&enrollment(a.id, 2, S::Approved), now + Duration::days(31)).await.unwrap(),
            None
        );
        let revoked: Vec<_> = s.revoked_claims(now).await.unwrap().into_iter().map(|c| c.id).collect();
        assert_eq!(revoked, vec![c.id]);
        assert!(s.revoked_claims(now + Duration::days(31)).await.unwrap().is_empty());

        // Paging, newest first.
        let p1 = s.list_claims(None, 2).await.unwrap();
        assert_eq!(p1.items.iter().map(|c| c.id).collect::<Vec<_>>(), vec![c.id, b.id]);
        let p2 = s.list_claims(p1.next.as_deref().map(|n| n.parse().unwrap()), 2).await.unwrap();
        assert_eq!(p2.items.iter().map(|c| c.id).collect::<Vec<_>>(), vec![a.id]);
        assert_eq!(p2.next, None);
    })
    .await;
}
