//! Real-time events through the gateway: a transfer committed by the node reaches the
//! recipient's WebSocket and SSE stream (from the node's event subscription), and nobody
//! else's.

mod gateway_support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway_support::{StoreKind, World};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(world: &World, token: &str) -> Socket {
    let url = format!("ws://{}/api/v1/ws?access_token={token}", world.addr);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket")
        .0
}

/// The next JSON text message within `wait`, if any.
async fn next(socket: &mut Socket, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                return serde_json::from_str(text.as_str()).ok();
            }
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

async fn say(socket: &mut Socket, message: Value) -> Value {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .expect("send");
    next(socket, Duration::from_secs(5)).await.expect("reply")
}

/// Collects messages until one of each of `kinds` arrived (in any order); those, by kind.
async fn events_of(socket: &mut Socket, kinds: &[&str]) -> Vec<Value> {
    let mut found: Vec<Option<Value>> = vec![None; kinds.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while found.iter().any(Option::is_none) && tokio::time::Instant::now() < deadline {
        let Some(message) = next(socket, Duration::from_secs(10)).await else {
            break;
        };
        if let Some(i) = kinds.iter().position(|k| message["type"] == *k) {
            found[i].get_or_insert(message);
        }
    }
    found
        .into_iter()
        .zip(kinds)
        .map(|(m, k)| m.unwrap_or_else(|| panic!("no {k} event")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_events_reach_the_recipient_and_nobody_else() {
    let world = World::start(StoreKind::Sqlite, |_| {}).await;
    let (alice, _) = world.user("rt-alice@example.com").await;
    let (bob, _) = world.user("rt-bob@example.com").await;
    let (carol, _) = world.user("rt-carol@example.com").await;
    let alice_wallet = world.wallet(&alice, "USD").await;
    let bob_wallet = world.wallet(&bob, "USD").await;
    let _carol_wallet = world.wallet(&carol, "USD").await;
    assert_eq!(
        world.deposit(&alice_wallet, "50.00", "USD").await.status,
        200
    );

    // Without a token there is no stream.
    let refused = world.get("/api/v1/ws", None).await;
    assert_eq!(refused.status, 401, "{}", refused.text());

    let mut bob_socket = connect(&world, &bob).await;
    let subscribed = say(&mut bob_socket, json!({"type": "subscribe.transactions"})).await;
    assert_eq!(subscribed["type"], "subscribed");
    let wallet = say(
        &mut bob_socket,
        json!({"type": "subscribe.wallet", "wallet_id": bob_wallet}),
    )
    .await;
    assert_eq!(wallet["type"], "subscribed", "{wallet}");
    let foreign = say(
        &mut bob_socket,
        json!({"type": "subscribe.wallet", "wallet_id": alice_wallet}),
    )
    .await;
    assert_eq!(
        (foreign["type"].as_str(), foreign["code"].as_str()),
        (Some("error"), Some("wallet_not_found"))
    );
    let garbage = say(&mut bob_socket, json!({"nope": 1})).await;
    assert_eq!(garbage["code"], "message_invalid");

    let mut carol_socket = connect(&world, &carol).await;
    assert_eq!(
        say(&mut carol_socket, json!({"type": "subscribe.transactions"})).await["type"],
        "subscribed"
    );

    // Bob's SSE stream, read from a raw socket.
    let mut sse = tokio::net::TcpStream::connect(world.addr)
        .await
        .expect("connect");
    sse.write_all(
        format!(
            "GET /api/v1/stream/notifications HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\nauthorization: Bearer {bob}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    // Let the stream subscribe before the transfer happens.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let sent = world
        .send(&alice, "rt-1", &json!({"from_wallet_id": alice_wallet, "to_wallet_id": bob_wallet, "amount": "5.00", "currency": "USD"}))
        .await;
    assert_eq!(sent.status, 201, "{}", sent.text());
    let transaction_id = sent.json()["id"].clone();

    let events = events_of(
        &mut bob_socket,
        &["transaction.received", "balance.updated"],
    )
    .await;
    let (received, balance) = (&events[0], &events[1]);
    assert_eq!(received["data"]["amount"], "5.00");
    assert_eq!(received["data"]["id"], transaction_id);
    assert_eq!(received["data"]["to_wallet_id"], bob_wallet.as_str());
    assert_eq!(balance["data"]["balance"], "5.00");
    assert_eq!(balance["data"]["wallet_id"], bob_wallet.as_str());

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(10), sse.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&chunk[..n]),
            _ => break,
        }
        if String::from_utf8_lossy(&seen).contains("event: transaction.received") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(text.contains("event: transaction.received"), "{text}");
    assert!(text.contains("5.00"), "{text}");

    // Carol saw nothing of it.
    assert_eq!(
        next(&mut carol_socket, Duration::from_millis(500)).await,
        None
    );
    let metrics = String::from_utf8_lossy(&world.get("/metrics", None).await.body).into_owned();
    assert!(
        metrics.contains("paycore_gateway_websockets_open 2"),
        "{metrics}"
    );
    // Logging out ends the streams opened with that token.
    let logout = world
        .call("POST", "/api/v1/users/logout", Some(&bob), &[], None)
        .await;
    assert_eq!(logout.status, 204);
    let mut closed = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), bob_socket.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                closed = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    assert_eq!(closed, Some(4001));
    drop(sse);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_websocket_message_is_closed_with_1009() {
    let world = World::start(StoreKind::Sqlite, |_| {}).await;
    let (dora, _) = world.user("rt-dora@example.com").await;
    for size in [5_000, 1_000_000] {
        let mut socket = connect(&world, &dora).await;
        let subscribed = say(&mut socket, json!({"type": "subscribe.transactions"})).await;
        assert_eq!(subscribed["type"], "subscribed");
        let big = json!({"type": "subscribe.transactions", "pad": "x".repeat(size)});
        // The server may close before it read everything: a failed send is fine.
        let _ = socket.send(Message::Text(big.to_string().into())).await;
        let mut closed = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    closed = frame.map(|f| u16::from(f.code));
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                _ => break,
            }
        }
        assert_eq!(closed, Some(1009), "a {size}-byte message");
    }
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_through_another_gateway_ends_the_stream_within_the_check_interval() {
    let world = World::start(StoreKind::Sqlite, |_| {}).await;
    let second = world.second_gateway().await;
    let (erin, _) = world.user("rt-erin@example.com").await;
    let url = format!("ws://{}/api/v1/ws?access_token={erin}", second.addr);
    let mut socket = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket")
        .0;
    assert_eq!(
        say(&mut socket, json!({"type": "subscribe.transactions"})).await["type"],
        "subscribed"
    );
    let logout = world
        .call("POST", "/api/v1/users/logout", Some(&erin), &[], None)
        .await;
    assert_eq!(logout.status, 204);
    // SESSION_CHECK_SECS is 10: the stream on the other gateway ends within it (plus slack).
    let started = tokio::time::Instant::now();
    let mut closed = None;
    while started.elapsed() < Duration::from_secs(15) {
        match tokio::time::timeout(Duration::from_secs(15), socket.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                closed = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    assert_eq!(closed, Some(4001), "after {:?}", started.elapsed());
    second.stop().await;
    world.stop().await;
}
