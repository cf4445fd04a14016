//! The audit log against real NATS and real PostgreSQL: two consumers sharing one durable
//! consumer append every event exactly once into one intact chain; a replay appends nothing;
//! a foreign message is kept aside; a changed, a deleted and two swapped rows are each found
//! by `verify` at the right row.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

mod support;
use paycore_publish::audit::{self, AuditConfig};
use paycore_publish::event_json::Topic;
use paycore_publish::threads::start_publishers;
use support::*;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[test]
fn the_audit_chain_holds_every_event_once_and_catches_tampering() {
    let Some(nats) = Nats::start("audit") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = match runtime.block_on(audit::connect(&database_url())) {
        Ok(client) => client,
        Err(error) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL unreachable: {error}"
            );
            eprintln!("SKIP: PostgreSQL unreachable: {error}");
            return;
        }
    };
    let schema = format!("audit_test_{}", std::process::id());
    let dir = data_dir("audit");
    let workload = workload_config(2, 200);
    let expected = write_journal(&dir, workload, 3_000);
    let total: u64 = expected.iter().map(|e| e.len() as u64).sum();
    let jetstream = test_config(&nats.url(), "audit");
    start_publishers(
        &dir,
        &engine_config(&workload),
        vec![None, None],
        &jetstream,
        1024,
        true,
    )
    .expect("start")
    .join()
    .expect("published");

    let config = AuditConfig {
        jetstream: jetstream.clone(),
        shards: 2,
        postgres_url: database_url(),
        schema: schema.clone(),
        consumer: "audit".into(),
        batch_max: 500,
        stop_when_idle: true,
    };
    let stop = AtomicBool::new(false);
    // Two members of one consumer group, side by side.
    let (a, b) = runtime.block_on(async {
        // The schema first, so the two members do not race to create it.
        audit::create_schema(&client, &schema)
            .await
            .expect("schema");
        tokio::join!(audit::run(&config, &stop), audit::run(&config, &stop))
    });
    let (a, b) = (a.expect("member a"), b.expect("member b"));
    assert_eq!(
        a.appended + b.appended,
        total,
        "every event once ({a:?}, {b:?})"
    );
    let verified = runtime
        .block_on(audit::verify(&client, &schema))
        .expect("verify");
    assert_eq!(verified.rows, total);
    assert_eq!(verified.broken, None);

    // Another consumer replays the whole stream: every event is already there.
    let replay = AuditConfig {
        consumer: "audit-replay".into(),
        ..config.clone()
    };
    let again = runtime
        .block_on(audit::run(&replay, &stop))
        .expect("replay");
    assert_eq!((again.appended, again.duplicates), (0, total));

    // A message on our subjects that is not ours: kept aside, nothing lost, no panic.
    runtime.block_on(async {
        let nats_client = async_nats::connect(nats.url()).await.expect("connect");
        async_nats::jetstream::new(nats_client)
            .publish(jetstream.subject(Topic::User, 1), "not an event".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    });
    let foreign = runtime
        .block_on(audit::run(&config, &stop))
        .expect("foreign");
    assert_eq!((foreign.appended, foreign.rejected), (0, 1));
    let kept: i64 = runtime
        .block_on(client.query_one(
            &format!("SELECT count(*) FROM {schema}.audit_rejected"),
            &[],
        ))
        .expect("rejected")
        .get(0);
    assert_eq!(kept, 1);

    // The trigger refuses changes; a superuser who disables it is still caught.
    let refused = runtime.block_on(client.batch_execute(&format!(
        "UPDATE {schema}.audit_log SET payload = 'x' WHERE row_id = 1"
    )));
    assert!(refused.is_err(), "the log must refuse an UPDATE");
    let sql = |text: String| {
        runtime
            .block_on(client.batch_execute(&text))
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    };
    sql(format!(
        "ALTER TABLE {schema}.audit_log DISABLE TRIGGER audit_log_append_only"
    ));
    let first_broken = || {
        runtime
            .block_on(audit::verify(&client, &schema))
            .expect("verify")
            .broken
            .map(|b| (b.row_id, b.what))
    };
    // Tamper one row (an amount in its payload).
    sql(format!(
        "CREATE TABLE {schema}.saved AS SELECT * FROM {schema}.audit_log WHERE row_id IN (10, 20, 30, 31)"
    ));
    sql(format!(
        "UPDATE {schema}.audit_log SET payload = replace(payload, '\"version\":1', '\"version\":2') WHERE row_id = 10"
    ));
    assert_eq!(first_broken(), Some((10, "hash".to_string())));
    sql(format!(
        "UPDATE {schema}.audit_log l SET payload = s.payload FROM {schema}.saved s WHERE l.row_id = 10 AND s.row_id = 10"
    ));
    assert_eq!(first_broken(), None);
    // Delete one.
    sql(format!("DELETE FROM {schema}.audit_log WHERE row_id = 20"));
    assert_eq!(first_broken(), Some((20, "row missing".to_string())));
    sql(format!(
        "INSERT INTO {schema}.audit_log SELECT * FROM {schema}.saved WHERE row_id = 20"
    ));
    assert_eq!(first_broken(), None);
    // Swap two (their contents change places; row ids stay in order).
    sql(format!(
        "UPDATE {schema}.audit_log l SET event_id = 'swap-' || s.row_id, payload = s.payload,
             prev_hash = s.prev_hash, hash = s.hash
         FROM {schema}.saved s WHERE (l.row_id, s.row_id) IN ((30, 31), (31, 30));
         UPDATE {schema}.audit_log l SET event_id = s.event_id FROM {schema}.saved s
         WHERE l.event_id = 'swap-' || s.row_id"
    ));
    assert_eq!(first_broken(), Some((30, "prev_hash".to_string())));
    sql(format!(
        "UPDATE {schema}.audit_log SET event_id = 'restore-' || row_id WHERE row_id IN (30, 31);
         UPDATE {schema}.audit_log l SET event_id = s.event_id, payload = s.payload,
             prev_hash = s.prev_hash, hash = s.hash
         FROM {schema}.saved s WHERE l.row_id = s.row_id AND s.row_id IN (30, 31)"
    ));
    assert_eq!(first_broken(), None);
    // Cut the tail: the head names it.
    sql(format!(
        "DELETE FROM {schema}.audit_log WHERE row_id = {total}"
    ));
    assert_eq!(
        first_broken().map(|(_, what)| what),
        Some("head (last row)".to_string())
    );

    sql(format!("DROP SCHEMA {schema} CASCADE"));
    let _ = std::fs::remove_dir_all(&dir);
    std::thread::sleep(Duration::from_millis(10));
}
