//! The gateway over real HTTP on loopback, in front of a real node, with its SQLite store (and
//! PostgreSQL, in its own schema, for the journey): the whole journey, bad inputs, cross-user
//! attempts, idempotent replay and conflict, rate limits, webhook signatures, admin actions.

mod gateway_support;

use gateway_support::{ADMIN_EMAIL, JWT_SECRET, StoreKind, World, postgres_available};
use gateway_support::{call_at, now_secs, raw_at};
use serde_json::json;

/// register -> login -> open wallet -> deposit -> transfer (replayed, then conflicting) ->
/// transaction by id -> history pages -> profile -> refresh rotation -> logout.
async fn journey(world: &World) {
    let (alice, alice_id) = world.user("alice@example.com").await;
    let (bob, bob_id) = world.user("bob@example.com").await;
    let alice_usd = world.wallet(&alice, "USD").await;
    let bob_usd = world.wallet(&bob, "USD").await;

    let deposit = world.deposit(&alice_usd, "100.00", "USD").await;
    assert_eq!(deposit.status, 200, "{}", deposit.text());
    assert_eq!(world.balance(&alice, &alice_usd).await, "100.00");

    let send = json!({"from_wallet_id": alice_usd, "to_wallet_id": bob_usd, "amount": "12.50", "currency": "USD"});
    let sent = world.send(&alice, "pay-1", &send).await;
    assert_eq!(sent.status, 201, "{}", sent.text());
    let transaction = sent.json();
    assert_eq!(transaction["amount"], "12.50");
    assert_eq!(transaction["direction"], "sent");
    let transaction_id = transaction["id"].as_str().expect("id").to_owned();

    // Same key, same body: the stored answer, and no second transfer.
    let replay = world.send(&alice, "pay-1", &send).await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json(), transaction);
    assert_eq!(world.balance(&alice, &alice_usd).await, "87.50");
    assert_eq!(world.balance(&bob, &bob_usd).await, "12.50");

    // Same key, another body: refused.
    let other = json!({"from_wallet_id": alice_usd, "to_wallet_id": bob_usd, "amount": "1.00", "currency": "USD"});
    let conflict = world.send(&alice, "pay-1", &other).await;
    assert_eq!(conflict.status, 422);
    assert_eq!(conflict.code(), "idempotency_key_reused");

    // By e-mail, too.
    let by_email = json!({"from_wallet_id": alice_usd, "to_email": "bob@example.com", "amount": "0.50", "currency": "USD"});
    assert_eq!(world.send(&alice, "pay-2", &by_email).await.status, 201);
    let third = json!({"from_wallet_id": alice_usd, "to_wallet_id": bob_usd, "amount": "2", "currency": "USD"});
    assert_eq!(world.send(&alice, "pay-3", &third).await.status, 201);
    assert_eq!(world.balance(&alice, &alice_usd).await, "85.00");

    // Both sides see the transaction; direction is theirs.
    let seen = world
        .get(
            &format!("/api/v1/transactions/{transaction_id}"),
            Some(&bob),
        )
        .await;
    assert_eq!(seen.status, 200, "{}", seen.text());
    assert_eq!(seen.json()["direction"], "received");

    // History: 3 sends + 1 deposit for alice, newest first, two per page.
    let page = world
        .get("/api/v1/transactions?limit=2", Some(&alice))
        .await;
    assert_eq!(page.status, 200, "{}", page.text());
    let page = page.json();
    assert_eq!(page["has_more"], true);
    let first = page["data"].as_array().expect("data").clone();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0]["amount"], "2.00");
    let cursor = first[1]["id"].as_str().expect("id");
    let next = world
        .get(
            &format!("/api/v1/transactions?limit=2&starting_after={cursor}"),
            Some(&alice),
        )
        .await
        .json();
    assert_eq!(next["has_more"], false);
    let rest = next["data"].as_array().expect("data");
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0]["amount"], "12.50");
    assert_eq!(rest[1]["type"], "deposit");
    let bob_history = world.get("/api/v1/transactions", Some(&bob)).await.json();
    assert_eq!(bob_history["data"].as_array().map(Vec::len), Some(3));

    // Wallet list.
    let wallets = world.get("/api/v1/wallets", Some(&alice)).await.json();
    assert_eq!(wallets["data"][0]["id"], alice_usd.as_str());
    assert_eq!(wallets["data"][0]["available"], "85.00");

    // Profile.
    let profile = world
        .get("/api/v1/users/profile", Some(&alice))
        .await
        .json();
    assert_eq!(profile["id"], alice_id.as_str());
    assert_eq!(profile["tier"], "unverified");
    let put = world
        .call(
            "PUT",
            "/api/v1/users/profile",
            Some(&alice),
            &[],
            Some(json!({"full_name": "Alice A."}).to_string().as_bytes()),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json()["full_name"], "Alice A.");
    assert_ne!(alice_id, bob_id);

    // Refresh tokens rotate; presenting a spent one revokes the family.
    let login = world
        .post(
            "/api/v1/users/login",
            None,
            &json!({"email": "bob@example.com", "password": "correct horse battery"}),
        )
        .await
        .json();
    let refresh = login["refresh_token"].as_str().expect("refresh").to_owned();
    let rotated = world
        .post(
            "/api/v1/users/refresh",
            None,
            &json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let next_refresh = rotated.json()["refresh_token"]
        .as_str()
        .expect("r")
        .to_owned();
    let reused = world
        .post(
            "/api/v1/users/refresh",
            None,
            &json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(reused.status, 401);
    assert_eq!(reused.code(), "refresh_token_invalid");
    let family_revoked = world
        .post(
            "/api/v1/users/refresh",
            None,
            &json!({"refresh_token": next_refresh}),
        )
        .await;
    assert_eq!(family_revoked.status, 401);

    // Logout revokes the access token.
    let logout = world
        .call("POST", "/api/v1/users/logout", Some(&alice), &[], None)
        .await;
    assert_eq!(logout.status, 204, "{}", logout.text());
    let after = world.get("/api/v1/users/profile", Some(&alice)).await;
    assert_eq!(after.status, 401);
    assert_eq!(after.code(), "token_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_on_sqlite() {
    let world = World::start(StoreKind::Sqlite, |_| {}).await;
    journey(&world).await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_on_postgres() {
    if !postgres_available().await {
        return;
    }
    let world = World::start(StoreKind::Postgres, |_| {}).await;
    journey(&world).await;
    world.stop().await;
}

/// A token signed by us with other claims or header (for forged / expired / alg none).
fn token(header: &str, claims: &serde_json::Value, secret: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!(
        "{}.{}",
        b64.encode(header.as_bytes()),
        b64.encode(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64.encode(tag.as_ref()))
}

/// label, method, path, body, expected status, expected problem code.
type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_problems_never_500() {
    let world = World::start(StoreKind::Sqlite, |args| args.body_bytes_max = 4096).await;
    let (alice, alice_id) = world.user("carol@example.com").await;
    let wallet = world.wallet(&alice, "USD").await;
    let (_, _) = world.user("dave@example.com").await;
    let dave_token = world.login("dave@example.com").await;
    let dave_wallet = world.wallet(&dave_token, "USD").await;
    assert_eq!(world.deposit(&wallet, "10.00", "USD").await.status, 200);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = |exp: i64, aud: &str| {
        json!({"sub": alice_id, "email": "carol@example.com", "role": "admin", "tier": "premium",
               "iat": now - 10, "exp": exp, "jti": "forged", "aud": aud})
    };
    let forged = token(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &claims(now + 600, "paycore"),
        b"not-the-secret-not-the-secret-xx",
    );
    let expired = token(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &claims(now - 600, "paycore"),
        JWT_SECRET.as_bytes(),
    );
    let wrong_audience = token(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &claims(now + 600, "other"),
        JWT_SECRET.as_bytes(),
    );
    let none = {
        let t = token(
            r#"{"alg":"none","typ":"JWT"}"#,
            &claims(now + 600, "paycore"),
            JWT_SECRET.as_bytes(),
        );
        let cut = t.rfind('.').expect("dot");
        format!("{}.", &t[..cut])
    };
    let hs512 = token(
        r#"{"alg":"HS512","typ":"JWT"}"#,
        &claims(now + 600, "paycore"),
        JWT_SECRET.as_bytes(),
    );
    for (label, bad, code) in [
        ("forged", forged.as_str(), "token_invalid"),
        ("expired", expired.as_str(), "token_expired"),
        ("wrong audience", wrong_audience.as_str(), "token_invalid"),
        ("alg none", none.as_str(), "token_invalid"),
        ("alg HS512", hs512.as_str(), "token_invalid"),
        ("garbage", "abc", "token_invalid"),
        ("empty", "", "unauthorized"),
    ] {
        let response = world.get("/api/v1/wallets", Some(bad)).await;
        assert_eq!(response.status, 401, "{label}: {}", response.text());
        assert_eq!(response.code(), code, "{label}");
    }
    let no_auth = world.get("/api/v1/wallets", None).await;
    assert_eq!(
        (no_auth.status, no_auth.code().as_str()),
        (401, "unauthorized")
    );

    let huge = vec![b'x'; 10_000];
    let send = |amount: serde_json::Value, currency: &str| {
        json!({"from_wallet_id": wallet, "to_wallet_id": dave_wallet, "amount": amount, "currency": currency}).to_string()
    };
    let freeze_path = format!("/api/v1/admin/wallets/{dave_wallet}/freeze");
    let cases: Vec<Case> = vec![
        ("malformed json", "POST", "/api/v1/wallets", b"{\"currency\":".to_vec(), 400, "malformed_json"),
        ("not json", "POST", "/api/v1/wallets", b"hello".to_vec(), 400, "malformed_json"),
        ("empty body", "POST", "/api/v1/wallets", Vec::new(), 400, "malformed_json"),
        ("wrong type", "POST", "/api/v1/wallets", br#"{"currency": 12}"#.to_vec(), 422, "invalid_body"),
        ("unknown field", "POST", "/api/v1/wallets", br#"{"currency": "USD", "x": 1}"#.to_vec(), 422, "invalid_body"),
        ("array body", "POST", "/api/v1/wallets", b"[]".to_vec(), 422, "invalid_body"),
        // serde reads a struct from an array of its fields: bodies must be objects.
        ("tuple body", "POST", "/api/v1/wallets", br#"["EUR"]"#.to_vec(), 422, "invalid_body"),
        ("tuple send", "POST", "/api/v1/transactions/send",
            json!([wallet, dave_wallet, null, "1.00", "USD"]).to_string().into_bytes(), 422, "invalid_body"),
        ("string body", "POST", "/api/v1/wallets", br#""EUR""#.to_vec(), 422, "invalid_body"),
        ("null body", "POST", "/api/v1/wallets", b"null".to_vec(), 422, "invalid_body"),
        ("number body", "POST", "/api/v1/users/kyc", b"12".to_vec(), 422, "invalid_body"),
        ("huge body", "POST", "/api/v1/wallets", huge.clone(), 413, "body_too_large"),
        ("unknown currency", "POST", "/api/v1/wallets", br#"{"currency": "XYZ"}"#.to_vec(), 422, "currency_unknown"),
        ("bad currency code", "POST", "/api/v1/wallets", br#"{"currency": "usd"}"#.to_vec(), 422, "currency_invalid"),
        ("long currency code", "POST", "/api/v1/wallets", br#"{"currency": "ABCDEFGHIJKL"}"#.to_vec(), 422, "currency_invalid"),
        ("second wallet", "POST", "/api/v1/wallets", br#"{"currency": "USD"}"#.to_vec(), 409, "wallet_exists"),
        ("amount as number", "POST", "/api/v1/transactions/send", send(json!(1.5), "USD").into_bytes(), 422, "invalid_body"),
        ("negative amount", "POST", "/api/v1/transactions/send", send(json!("-1.00"), "USD").into_bytes(), 422, "amount_invalid"),
        ("zero amount", "POST", "/api/v1/transactions/send", send(json!("0.00"), "USD").into_bytes(), 422, "amount_invalid"),
        ("too many decimals", "POST", "/api/v1/transactions/send", send(json!("1.005"), "USD").into_bytes(), 422, "amount_invalid"),
        ("exponent", "POST", "/api/v1/transactions/send", send(json!("1e3"), "USD").into_bytes(), 422, "amount_invalid"),
        ("whitespace", "POST", "/api/v1/transactions/send", send(json!(" 1.00"), "USD").into_bytes(), 422, "amount_invalid"),
        ("huge amount", "POST", "/api/v1/transactions/send", send(json!("99999999999999999999999999999999"), "USD").into_bytes(), 422, "amount_invalid"),
        ("insufficient funds", "POST", "/api/v1/transactions/send", send(json!("10.01"), "USD").into_bytes(), 422, "insufficient_funds"),
        ("other currency", "POST", "/api/v1/transactions/send", send(json!("1.00"), "EUR").into_bytes(), 422, "currency_mismatch"),
        ("unknown recipient", "POST", "/api/v1/transactions/send",
            json!({"from_wallet_id": wallet, "to_wallet_id": "999999", "amount": "1.00", "currency": "USD"}).to_string().into_bytes(), 404, "recipient_not_found"),
        ("to self", "POST", "/api/v1/transactions/send",
            json!({"from_wallet_id": wallet, "to_wallet_id": wallet, "amount": "1.00", "currency": "USD"}).to_string().into_bytes(), 422, "same_wallet"),
        ("two recipients", "POST", "/api/v1/transactions/send",
            json!({"from_wallet_id": wallet, "to_wallet_id": dave_wallet, "to_email": "dave@example.com", "amount": "1.00", "currency": "USD"}).to_string().into_bytes(), 422, "recipient_invalid"),
        ("bad wallet id", "GET", "/api/v1/wallets/not-a-wallet", Vec::new(), 404, "wallet_not_found"),
        ("overflowing wallet id", "GET", "/api/v1/wallets/99999999999999999999999", Vec::new(), 404, "wallet_not_found"),
        ("bad transaction id", "GET", "/api/v1/transactions/not-a-uuid", Vec::new(), 404, "transaction_not_found"),
        ("bad limit", "GET", "/api/v1/transactions?limit=0", Vec::new(), 400, "limit_invalid"),
        ("huge limit", "GET", "/api/v1/transactions?limit=100000000000", Vec::new(), 400, "limit_invalid"),
        ("bad cursor", "GET", "/api/v1/transactions?starting_after=zzz", Vec::new(), 400, "cursor_invalid"),
        ("unknown parameter", "GET", "/api/v1/transactions?x=1", Vec::new(), 400, "query_invalid"),
        ("unknown route", "GET", "/api/v1/nothing", Vec::new(), 404, "not_found"),
        ("wrong method", "DELETE", "/api/v1/wallets", Vec::new(), 405, "method_not_allowed"),
        ("long name", "PUT", "/api/v1/users/profile", json!({"full_name": "x".repeat(101)}).to_string().into_bytes(), 422, "full_name_invalid"),
        ("kyc bad document", "POST", "/api/v1/users/kyc", br#"{"document_type": "selfie", "document_number": "1234"}"#.to_vec(), 422, "document_type_invalid"),
        ("admin as user", "POST", &freeze_path, Vec::new(), 403, "forbidden"),
    ];
    for (label, method, path, body, status, code) in &cases {
        let headers = [("idempotency-key", "bad-input-case")];
        let headers: &[(&str, &str)] = if path.ends_with("/send") {
            &headers
        } else {
            &[]
        };
        // Each send case gets its own key so that one stored answer does not replay for the next.
        let key = format!("case-{}", label.replace(' ', "-"));
        let owned = [("idempotency-key", key.as_str())];
        let headers = if headers.is_empty() {
            headers
        } else {
            &owned[..]
        };
        let response = world
            .call(method, path, Some(&alice), headers, Some(body))
            .await;
        assert_eq!(response.status, *status, "{label}: {}", response.text());
        assert_eq!(response.code(), *code, "{label}");
        assert!(response.json()["request_id"].is_string(), "{label}");
    }
    // Send without an Idempotency-Key, or with a bad one.
    let body = send(json!("1.00"), "USD");
    let missing = world
        .call(
            "POST",
            "/api/v1/transactions/send",
            Some(&alice),
            &[],
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (400, "idempotency_key_required")
    );
    let long_key = "k".repeat(200);
    let long = world
        .call(
            "POST",
            "/api/v1/transactions/send",
            Some(&alice),
            &[("idempotency-key", &long_key)],
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(
        (long.status, long.code().as_str()),
        (400, "idempotency_key_invalid")
    );

    // Registration and login inputs.
    for (label, body, status, code) in [
        (
            "bad email",
            json!({"email": "nope", "password": "long enough pw"}),
            422,
            "email_invalid",
        ),
        (
            "short password",
            json!({"email": "x@example.com", "password": "short"}),
            422,
            "password_invalid",
        ),
        (
            "taken email",
            json!({"email": "carol@example.com", "password": "long enough pw"}),
            409,
            "email_taken",
        ),
        (
            "missing password",
            json!({"email": "y@example.com"}),
            422,
            "invalid_body",
        ),
    ] {
        let response = world.post("/api/v1/users/register", None, &body).await;
        assert_eq!(response.status, status, "{label}: {}", response.text());
        assert_eq!(response.code(), code, "{label}");
    }
    let wrong = world
        .post(
            "/api/v1/users/login",
            None,
            &json!({"email": "carol@example.com", "password": "wrong password"}),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.code().as_str()),
        (401, "credentials_invalid")
    );
    let unknown = world
        .post(
            "/api/v1/users/login",
            None,
            &json!({"email": "nobody@example.com", "password": "wrong password"}),
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (401, "credentials_invalid")
    );

    // A JSON body needs Content-Type: application/json (parameters allowed): else 415.
    // "EURO": a currency the core does not know, so an accepted body changes nothing.
    let euro = br#"{"currency": "EURO"}"#;
    for (label, content_type, status, code) in [
        (
            "text/plain",
            Some("text/plain"),
            415,
            "unsupported_media_type",
        ),
        (
            "form",
            Some("application/x-www-form-urlencoded"),
            415,
            "unsupported_media_type",
        ),
        (
            "json prefix",
            Some("application/jsonx"),
            415,
            "unsupported_media_type",
        ),
        ("none", None, 415, "unsupported_media_type"),
        (
            "json with charset",
            Some("application/json; charset=utf-8"),
            422,
            "currency_unknown",
        ),
    ] {
        let mut request = format!(
            "POST /api/v1/wallets HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\
             authorization: Bearer {alice}\r\ncontent-length: {}\r\n",
            euro.len()
        );
        if let Some(content_type) = content_type {
            request.push_str(&format!("content-type: {content_type}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(euro);
        let response = raw_at(world.addr, &bytes).await;
        assert_eq!(response.status, status, "{label}: {}", response.text());
        assert_eq!(response.code(), code, "{label}");
    }
    // What the HTTP parser refuses is a problem document too.
    let many_headers: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let long_uri = format!("/api/v1/wallets/{}", "9".repeat(70_000));
    let parser_cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "too many headers",
            format!("GET /health HTTP/1.1\r\nhost: t\r\n{many_headers}\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "long uri",
            format!("GET {long_uri} HTTP/1.1\r\nhost: t\r\n\r\n").into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            "garbage",
            b"HELLO THERE\r\n\r\n".to_vec(),
            400,
            "request_invalid",
        ),
        (
            "header without colon",
            b"GET /health HTTP/1.1\r\nhost t\r\n\r\n".to_vec(),
            400,
            "request_invalid",
        ),
    ];
    for (label, bytes, status, code) in parser_cases {
        let response = raw_at(world.addr, &bytes).await;
        assert_eq!(response.status, status, "{label}: {}", response.text());
        assert_eq!(response.code(), code, "{label}");
    }
    let _ = call_at;

    // Nothing above moved money.
    assert_eq!(world.balance(&alice, &wallet).await, "10.00");
    let metrics = world.get("/metrics", None).await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("paycore_gateway_http_requests_total"),
        "{text}"
    );
    assert!(
        !text.contains("status=\"500\""),
        "a 500 was answered:\n{text}"
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_touch_only_their_own_wallets_and_history() {
    let world = World::start(StoreKind::Sqlite, |_| {}).await;
    let (eve, _) = world.user("eve@example.com").await;
    let (frank, _) = world.user("frank@example.com").await;
    let eve_wallet = world.wallet(&eve, "EUR").await;
    let frank_wallet = world.wallet(&frank, "EUR").await;
    assert_eq!(world.deposit(&eve_wallet, "50.00", "EUR").await.status, 200);
    let paid = world
        .send(&eve, "e-1", &json!({"from_wallet_id": eve_wallet, "to_wallet_id": frank_wallet, "amount": "5.00", "currency": "EUR"}))
        .await;
    assert_eq!(paid.status, 201);
    let eve_tx = paid.json()["id"].as_str().expect("id").to_owned();
    let (mallory, _) = world.user("mallory@example.com").await;
    let mallory_wallet = world.wallet(&mallory, "EUR").await;

    // Reading someone else's wallet is answered like a missing one.
    let read = world
        .get(&format!("/api/v1/wallets/{eve_wallet}"), Some(&mallory))
        .await;
    assert_eq!(
        (read.status, read.code().as_str()),
        (404, "wallet_not_found")
    );
    // Sending from it too, and nothing moves.
    let steal = world
        .send(&mallory, "m-1", &json!({"from_wallet_id": eve_wallet, "to_wallet_id": mallory_wallet, "amount": "1.00", "currency": "EUR"}))
        .await;
    assert_eq!(
        (steal.status, steal.code().as_str()),
        (404, "wallet_not_found")
    );
    let withdraw = world
        .call(
            "POST",
            "/api/v1/withdrawals",
            Some(&mallory),
            &[("idempotency-key", "m-2")],
            Some(json!({"wallet_id": eve_wallet, "amount": "1.00", "currency": "EUR", "destination": "DE00"}).to_string().as_bytes()),
        )
        .await;
    assert_eq!(
        (withdraw.status, withdraw.code().as_str()),
        (404, "wallet_not_found")
    );
    assert_eq!(world.balance(&eve, &eve_wallet).await, "45.00");
    // Someone else's transaction, by id or as a cursor.
    let tx = world
        .get(&format!("/api/v1/transactions/{eve_tx}"), Some(&mallory))
        .await;
    assert_eq!(
        (tx.status, tx.code().as_str()),
        (404, "transaction_not_found")
    );
    let cursor = world
        .get(
            &format!("/api/v1/transactions?starting_after={eve_tx}"),
            Some(&mallory),
        )
        .await;
    assert_eq!(
        (cursor.status, cursor.code().as_str()),
        (400, "cursor_invalid")
    );
    let history = world
        .get("/api/v1/transactions", Some(&mallory))
        .await
        .json();
    assert_eq!(history["data"].as_array().map(Vec::len), Some(0));
    let wallets = world.get("/api/v1/wallets", Some(&mallory)).await.json();
    assert_eq!(wallets["data"].as_array().map(Vec::len), Some(1));
    // The same Idempotency-Key as eve's: separate per user, so mallory's request runs.
    let same_key = world
        .send(&mallory, "e-1", &json!({"from_wallet_id": mallory_wallet, "to_wallet_id": frank_wallet, "amount": "1.00", "currency": "EUR"}))
        .await;
    assert_eq!(
        (same_key.status, same_key.code().as_str()),
        (422, "insufficient_funds")
    );
    // Admin routes are admins'.
    let freeze = world
        .call(
            "POST",
            &format!("/api/v1/admin/wallets/{eve_wallet}/freeze"),
            Some(&mallory),
            &[],
            None,
        )
        .await;
    assert_eq!((freeze.status, freeze.code().as_str()), (403, "forbidden"));
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_headers() {
    let world = World::start(StoreKind::Sqlite, |args| args.rate_limits = "seed".into()).await;
    let (grace, _) = world.user("grace@example.com").await;
    let wallet = world.wallet(&grace, "USD").await;
    // Send: 5 per minute. Each attempt is rejected by the core (no funds) but counts.
    let body = json!({"from_wallet_id": wallet, "to_email": "grace@example.com", "amount": "1.00", "currency": "USD"});
    // (One more allowance every 12 s: a slow machine may get a sixth or seventh through.)
    let started = std::time::Instant::now();
    let mut limited = None;
    for i in 0..20 {
        let response = world.send(&grace, &format!("r-{i}"), &body).await;
        if response.status == 429 {
            let refilled = started.elapsed().as_secs() as usize / 12 + 1;
            assert!((5..=5 + refilled).contains(&i), "429 at attempt {i}");
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("a 429 within 20 sends");
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(limited.code(), "rate_limited");
    let retry_after: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.header("ratelimit-limit"), Some("5"));
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    assert!(limited.header("ratelimit-reset").is_some());

    // Login: 10 per minute per e-mail (wrong passwords count too). The allowance refills one
    // attempt per 6 s, so on a slow machine (argon2 in a debug build) a few more may pass.
    let wrong = json!({"email": "grace@example.com", "password": "wrong password"});
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    while statuses.last() != Some(&429) && statuses.len() < 40 {
        statuses.push(world.post("/api/v1/users/login", None, &wrong).await.status);
    }
    let refilled = started.elapsed().as_secs() as usize / 6 + 1;
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // The set-up's login took one of the 10.
    assert!(statuses.len() > 9, "{statuses:?}");
    assert!(statuses.len() - 1 <= 9 + refilled, "{statuses:?}");
    assert!(statuses[..9].iter().all(|s| *s == 401), "{statuses:?}");
    let metrics = String::from_utf8_lossy(&world.get("/metrics", None).await.body).into_owned();
    assert!(
        metrics.contains("paycore_gateway_rate_limited_total"),
        "{metrics}"
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_need_a_valid_recent_signature() {
    let world = World::start(StoreKind::Sqlite, |_| {}).await;
    let (henry, _) = world.user("henry@example.com").await;
    let wallet = world.wallet(&henry, "BTC").await;
    let event = json!({"id": "evt-sig", "type": "deposit.succeeded",
        "data": {"wallet_id": wallet, "amount": "0.00000001", "currency": "BTC"}})
    .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let cases = [
        ("no header", None),
        ("garbage", Some("nonsense".to_owned())),
        (
            "wrong secret",
            Some(paycore_gateway::sign_webhook(
                b"other",
                now,
                event.as_bytes(),
            )),
        ),
        (
            "too old",
            Some(paycore_gateway::sign_webhook(
                gateway_support::WEBHOOK_SECRET.as_bytes(),
                now - 3600,
                event.as_bytes(),
            )),
        ),
        (
            "other body",
            Some(paycore_gateway::sign_webhook(
                gateway_support::WEBHOOK_SECRET.as_bytes(),
                now,
                b"{}",
            )),
        ),
    ];
    for (label, signature) in cases {
        let headers: Vec<(&str, &str)> = signature
            .iter()
            .map(|s| ("paycore-signature", s.as_str()))
            .collect();
        let response = world
            .call(
                "POST",
                "/api/v1/webhooks/provider",
                None,
                &headers,
                Some(event.as_bytes()),
            )
            .await;
        assert_eq!(response.status, 401, "{label}: {}", response.text());
        assert_eq!(response.code(), "signature_invalid", "{label}");
    }
    assert_eq!(world.balance(&henry, &wallet).await, "0.00000000");
    // The same event delivered twice credits once.
    let event: serde_json::Value = serde_json::from_str(&event).expect("json");
    assert_eq!(world.webhook(&event).await.status, 200);
    assert_eq!(world.webhook(&event).await.status, 200);
    assert_eq!(world.balance(&henry, &wallet).await, "0.00000001");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_freezes_wallets_and_reviews_kyc_withdrawals_settle() {
    let world = World::start(StoreKind::Sqlite, |_| {}).await;
    let admin = world.admin(ADMIN_EMAIL).await.token;
    let (ivy, ivy_id) = world.user("ivy@example.com").await;
    let (jack, _) = world.user("jack@example.com").await;
    let ivy_wallet = world.wallet(&ivy, "USD").await;
    let jack_wallet = world.wallet(&jack, "USD").await;
    assert_eq!(world.deposit(&ivy_wallet, "20.00", "USD").await.status, 200);

    let frozen = world
        .call(
            "POST",
            &format!("/api/v1/admin/wallets/{ivy_wallet}/freeze"),
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(frozen.status, 200, "{}", frozen.text());
    assert_eq!(frozen.json()["status"], "frozen");
    let body = json!({"from_wallet_id": ivy_wallet, "to_wallet_id": jack_wallet, "amount": "1.00", "currency": "USD"});
    let refused = world.send(&ivy, "f-1", &body).await;
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (422, "wallet_frozen")
    );
    let again = world
        .call(
            "POST",
            &format!("/api/v1/admin/wallets/{ivy_wallet}/freeze"),
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(
        (again.status, again.code().as_str()),
        (409, "wallet_status_unchanged")
    );
    let thawed = world
        .call(
            "POST",
            &format!("/api/v1/admin/wallets/{ivy_wallet}/unfreeze"),
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(thawed.json()["status"], "active");
    assert_eq!(world.send(&ivy, "f-2", &body).await.status, 201);

    // KYC: submit, approve (tier verified in the store and the core), visible at next login.
    let none = world.get("/api/v1/users/kyc", Some(&ivy)).await.json();
    assert_eq!(none["status"], "not_submitted");
    let submitted = world
        .post(
            "/api/v1/users/kyc",
            Some(&ivy),
            &json!({"document_type": "passport", "document_number": "X1234567"}),
        )
        .await;
    assert_eq!(submitted.status, 202, "{}", submitted.text());
    let approved = world
        .post(
            &format!("/api/v1/admin/kyc/{ivy_id}/approve"),
            Some(&admin),
            &json!({"tier": "verified"}),
        )
        .await;
    assert_eq!(approved.status, 200, "{}", approved.text());
    let status = world.get("/api/v1/users/kyc", Some(&ivy)).await.json();
    assert_eq!(status["status"], "approved");
    assert_eq!(status["document_last4"], "4567");
    let twice = world
        .post(
            &format!("/api/v1/admin/kyc/{ivy_id}/approve"),
            Some(&admin),
            &json!({}),
        )
        .await;
    assert_eq!(
        (twice.status, twice.code().as_str()),
        (409, "kyc_not_pending")
    );
    let ivy = world.login("ivy@example.com").await;
    let profile = world.get("/api/v1/users/profile", Some(&ivy)).await.json();
    assert_eq!(profile["tier"], "verified");

    // Withdrawal: held, then paid by the provider (money leaves), another failed (released).
    let withdraw = |key: &'static str, amount: &'static str| {
        let body = json!({"wallet_id": ivy_wallet, "amount": amount, "currency": "USD", "destination": "DE89370400440532013000"}).to_string();
        let world = &world;
        let ivy = ivy.clone();
        async move {
            world
                .call(
                    "POST",
                    "/api/v1/withdrawals",
                    Some(&ivy),
                    &[("idempotency-key", key)],
                    Some(body.as_bytes()),
                )
                .await
        }
    };
    let held = withdraw("w-1", "5.00").await;
    assert_eq!(held.status, 201, "{}", held.text());
    assert_eq!(held.json()["status"], "held");
    let wallet = world
        .get(&format!("/api/v1/wallets/{ivy_wallet}"), Some(&ivy))
        .await
        .json();
    assert_eq!(
        (wallet["available"].as_str(), wallet["frozen"].as_str()),
        (Some("14.00"), Some("5.00"))
    );
    let paid = world
        .webhook(&json!({"id": "evt-paid", "type": "withdrawal.paid", "data": {"withdrawal_id": held.json()["id"]}}))
        .await;
    assert_eq!(paid.status, 200, "{}", paid.text());
    let failed_one = withdraw("w-2", "4.00").await;
    assert_eq!(failed_one.status, 201);
    let failed = world
        .webhook(&json!({"id": "evt-failed", "type": "withdrawal.failed", "data": {"withdrawal_id": failed_one.json()["id"]}}))
        .await;
    assert_eq!(failed.status, 200, "{}", failed.text());
    let wallet = world
        .get(&format!("/api/v1/wallets/{ivy_wallet}"), Some(&ivy))
        .await
        .json();
    assert_eq!(
        (wallet["balance"].as_str(), wallet["frozen"].as_str()),
        (Some("14.00"), Some("0.00"))
    );
    let history = world.get("/api/v1/transactions", Some(&ivy)).await.json();
    let statuses: Vec<&str> = history["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|t| t["type"] == "withdrawal")
        .filter_map(|t| t["status"].as_str())
        .collect();
    assert_eq!(statuses, ["cancelled", "completed"]);

    // An operator settles or cancels held withdrawals too; a decided one stays decided.
    let by_operator = withdraw("w-3", "3.00").await;
    assert_eq!(by_operator.status, 201, "{}", by_operator.text());
    let id = by_operator.json()["id"].as_str().expect("id").to_owned();
    let not_admin = world
        .call(
            "POST",
            &format!("/api/v1/admin/withdrawals/{id}/cancel"),
            Some(&ivy),
            &[],
            None,
        )
        .await;
    assert_eq!(
        (not_admin.status, not_admin.code().as_str()),
        (403, "forbidden")
    );
    let cancelled = world
        .call(
            "POST",
            &format!("/api/v1/admin/withdrawals/{id}/cancel"),
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    assert_eq!(cancelled.json()["status"], "cancelled");
    let again = world
        .call(
            "POST",
            &format!("/api/v1/admin/withdrawals/{id}/cancel"),
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(
        again.status,
        200,
        "a repeated decision is idempotent: {}",
        again.text()
    );
    let contradicting = world
        .call(
            "POST",
            &format!("/api/v1/admin/withdrawals/{id}/settle"),
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(
        (contradicting.status, contradicting.code().as_str()),
        (409, "withdrawal_settled")
    );
    let settled_one = withdraw("w-4", "2.00").await;
    let id = settled_one.json()["id"].as_str().expect("id").to_owned();
    let settled = world
        .call(
            "POST",
            &format!("/api/v1/admin/withdrawals/{id}/settle"),
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(settled.json()["status"], "completed", "{}", settled.text());
    let unknown = world
        .call(
            "POST",
            "/api/v1/admin/withdrawals/00000000-0000-4000-8000-000000000000/settle",
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (404, "withdrawal_not_found")
    );
    let wallet = world
        .get(&format!("/api/v1/wallets/{ivy_wallet}"), Some(&ivy))
        .await
        .json();
    assert_eq!(
        (wallet["balance"].as_str(), wallet["frozen"].as_str()),
        (Some("12.00"), Some("0.00"))
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_answer() {
    let world = World::start(StoreKind::Sqlite, |_| {}).await;
    let health = world.get("/health", None).await;
    assert_eq!(health.status, 200);
    assert!(health.header("x-request-id").is_some());
    let ready = world.get("/ready", None).await.json();
    assert_eq!(
        (ready["core"].as_bool(), ready["store"].as_bool()),
        (Some(true), Some(true))
    );
    let echoed = world
        .call("GET", "/health", None, &[("x-request-id", "my-id-1")], None)
        .await;
    assert_eq!(echoed.header("x-request-id"), Some("my-id-1"));
    let metrics = world.get("/metrics", None).await;
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain"))
    );
    assert!(String::from_utf8_lossy(&metrics.body).contains("route=\"/health\""));
    // The OpenAPI document, built from the routes' own attributes.
    let openapi = world.get("/api/v1/openapi.json", None).await;
    assert_eq!(openapi.status, 200);
    let openapi = openapi.json();
    assert!(
        openapi["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{openapi}"
    );
    for (path, method) in [
        ("/api/v1/users/register", "post"),
        ("/api/v1/users/login", "post"),
        ("/api/v1/users/verify-2fa", "post"),
        ("/api/v1/users/profile", "get"),
        ("/api/v1/users/profile", "put"),
        ("/api/v1/users/kyc", "post"),
        ("/api/v1/wallets", "get"),
        ("/api/v1/wallets", "post"),
        ("/api/v1/wallets/{id}", "get"),
        ("/api/v1/transactions/send", "post"),
        ("/api/v1/transactions/{id}", "get"),
        ("/api/v1/transactions", "get"),
        ("/api/v1/withdrawals", "post"),
        ("/api/v1/webhooks/provider", "post"),
        ("/api/v1/admin/wallets/{id}/freeze", "post"),
        ("/api/v1/admin/kyc/{user_id}/approve", "post"),
    ] {
        assert!(
            openapi["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    assert!(openapi["components"]["schemas"]["SendRequest"].is_object());
    assert!(openapi["components"]["securitySchemes"]["bearer"].is_object());
    // With the core gone, /ready says so (503) and money routes answer 503, never 500.
    let mut world = world;
    if let Some(mut node) = world.node.take() {
        node.stop();
    }
    let (kate, _) = world.user("kate@example.com").await;
    let not_ready = world.get("/ready", None).await;
    assert_eq!(not_ready.status, 503, "{}", not_ready.text());
    let wallets = world.get("/api/v1/wallets", Some(&kate)).await;
    assert_eq!(
        (wallets.status, wallets.code().as_str()),
        (503, "core_unavailable")
    );
    assert!(wallets.header("retry-after").is_some());
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_factor_guards_login_and_large_transfers() {
    let world = World::start(StoreKind::Sqlite, |args| {
        args.totp_key = Some("ab".repeat(32));
        args.two_factor_above = "50".into();
    })
    .await;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
    };
    let (lara, _) = world.user("lara@example.com").await;
    let (mike, _) = world.user("mike@example.com").await;
    let wallet = world.wallet(&lara, "USD").await;
    let mike_wallet = world.wallet(&mike, "USD").await;
    assert_eq!(world.deposit(&wallet, "200.00", "USD").await.status, 200);
    let big = json!({"from_wallet_id": wallet, "to_wallet_id": mike_wallet, "amount": "60.00", "currency": "USD"});
    let small = json!({"from_wallet_id": wallet, "to_wallet_id": mike_wallet, "amount": "10.00", "currency": "USD"});
    let refused = world.send(&lara, "big-0", &big).await;
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (403, "two_factor_required")
    );

    let enrolled = world
        .call("POST", "/api/v1/users/2fa/enroll", Some(&lara), &[], None)
        .await;
    assert_eq!(enrolled.status, 200, "{}", enrolled.text());
    let secret =
        paycore_gateway::totp::base32_decode(enrolled.json()["secret"].as_str().expect("secret"))
            .expect("base32");
    assert!(
        enrolled.json()["otpauth_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("otpauth://totp/"))
    );
    let wrong = world
        .post(
            "/api/v1/users/2fa/confirm",
            Some(&lara),
            &json!({"code": "000000"}),
        )
        .await;
    // One in a million: the wrong code could be right; then this check says nothing.
    if paycore_gateway::totp::current(&secret, now()) != "000000" {
        assert_eq!(
            (wrong.status, wrong.code().as_str()),
            (401, "two_factor_code_invalid")
        );
    }
    // Each code works once: three distinct steps inside the server's ±1 window.
    let s0 = now() / 30;
    let code = paycore_gateway::totp::code_at(&secret, s0);
    let confirmed = world
        .post(
            "/api/v1/users/2fa/confirm",
            Some(&lara),
            &json!({"code": code}),
        )
        .await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.text());

    // Login now stops at the challenge.
    let login = world
        .post(
            "/api/v1/users/login",
            None,
            &json!({"email": "lara@example.com", "password": "correct horse battery"}),
        )
        .await
        .json();
    assert_eq!(login["two_factor_required"], true);
    assert!(login["access_token"].is_null());
    let challenge = login["challenge_token"]
        .as_str()
        .expect("challenge")
        .to_owned();
    // The challenge is no access token.
    let misuse = world.get("/api/v1/wallets", Some(&challenge)).await;
    assert_eq!(misuse.status, 401);
    let bad = world
        .post(
            "/api/v1/users/verify-2fa",
            None,
            &json!({"challenge_token": challenge, "code": "12345"}),
        )
        .await;
    assert_eq!(
        (bad.status, bad.code().as_str()),
        (401, "two_factor_code_invalid")
    );
    let code = paycore_gateway::totp::code_at(&secret, s0 + 1);
    let verified = world
        .post(
            "/api/v1/users/verify-2fa",
            None,
            &json!({"challenge_token": challenge, "code": code}),
        )
        .await;
    assert_eq!(verified.status, 200, "{}", verified.text());
    // The same code again (a replay) is refused.
    let replayed = world
        .post(
            "/api/v1/users/verify-2fa",
            None,
            &json!({"challenge_token": challenge, "code": code}),
        )
        .await;
    assert_eq!(
        (replayed.status, replayed.code().as_str()),
        (401, "two_factor_code_invalid")
    );
    let lara = verified.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();

    // Large transfers need the code; small ones do not.
    let missing = world.send(&lara, "big-1", &big).await;
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (401, "two_factor_code_required")
    );
    let third = if now() / 30 == s0 { s0 - 1 } else { s0 + 2 };
    let code = paycore_gateway::totp::code_at(&secret, third);
    let body = big.to_string();
    let sent = world
        .call(
            "POST",
            "/api/v1/transactions/send",
            Some(&lara),
            &[("idempotency-key", "big-2"), ("x-2fa-code", &code)],
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(sent.status, 201, "{}", sent.text());
    assert_eq!(world.send(&lara, "small-1", &small).await.status, 201);
    assert_eq!(world.balance(&lara, &wallet).await, "130.00");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_by_gateways_through_redis() {
    let url = "redis://127.0.0.1:6379";
    if tokio::net::TcpStream::connect("127.0.0.1:6379")
        .await
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and Redis at {url} is unreachable"
        );
        eprintln!("Redis unreachable: skipping");
        return;
    }
    let prefix = format!(
        "paycore-test:{}:{}:",
        std::process::id(),
        gateway_support::now_nanos()
    );
    let world = World::start(StoreKind::Sqlite, |args| {
        args.rate_limits = "seed".into();
        args.redis_url = Some(url.into());
        args.redis_prefix = prefix.clone();
    })
    .await;
    let second = world.second_gateway().await;
    let (nina, _) = world.user("nina@example.com").await;
    let wallet = world.wallet(&nina, "USD").await;
    let body = json!({"from_wallet_id": wallet, "to_email": "nina@example.com", "amount": "1.00", "currency": "USD"})
        .to_string();
    // 5 sends a minute in all: 3 through one gateway, 2 through the other, then both refuse.
    for i in 0..5 {
        let addr = if i % 2 == 0 { world.addr } else { second.addr };
        let key = format!("s-{i}");
        let response = gateway_support::call_at(
            addr,
            "POST",
            "/api/v1/transactions/send",
            Some(&nina),
            &[("idempotency-key", &key)],
            Some(body.as_bytes()),
        )
        .await;
        assert_ne!(response.status, 429, "send {i}: {}", response.text());
    }
    for (i, addr) in [world.addr, second.addr].into_iter().enumerate() {
        let key = format!("t-{i}");
        let limited = gateway_support::call_at(
            addr,
            "POST",
            "/api/v1/transactions/send",
            Some(&nina),
            &[("idempotency-key", &key)],
            Some(body.as_bytes()),
        )
        .await;
        assert_eq!(limited.status, 429, "gateway {i}: {}", limited.text());
        assert!(limited.header("retry-after").is_some());
    }
    second.stop().await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_gateway_serves_on_its_own_thread() {
    // What `paycore up` uses: a gateway with its own runtime beside the node's.
    let world = World::start(StoreKind::Sqlite, |_| {}).await;
    let mut args = world.gateway.as_ref().expect("gateway").state.args.clone();
    args.listen = "127.0.0.1:0".parse().expect("addr");
    let spawned = tokio::task::spawn_blocking(move || paycore_gateway::spawn_gateway(args))
        .await
        .expect("join")
        .expect("spawned gateway");
    let health = gateway_support::call_at(spawned.addr, "GET", "/health", None, &[], None).await;
    assert_eq!(health.status, 200, "{}", health.text());
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_sends_settle_from_pending_to_completed() {
    let world = World::start_sharded(StoreKind::Sqlite, 2, |_| {}).await;
    // Users land on shards by their id: make users until two wallets sit on different shards.
    let mut wallets: Vec<(String, String, u64)> = Vec::new();
    for i in 0..16 {
        let (token, _) = world.user(&format!("shard-{i}@example.com")).await;
        let wallet = world.wallet(&token, "USD").await;
        let shard = wallet.parse::<u64>().expect("wallet id") >> 48;
        wallets.push((token, wallet, shard));
        if wallets.iter().any(|w| w.2 == 0) && wallets.iter().any(|w| w.2 == 1) {
            break;
        }
    }
    let from = wallets
        .iter()
        .find(|w| w.2 == 0)
        .expect("a wallet on shard 0");
    let to = wallets
        .iter()
        .find(|w| w.2 == 1)
        .expect("a wallet on shard 1");
    assert_eq!(world.deposit(&from.1, "10.00", "USD").await.status, 200);
    let sent = world
        .send(
            &from.0,
            "x-1",
            &json!({"from_wallet_id": from.1, "to_wallet_id": to.1, "amount": "4.00", "currency": "USD"}),
        )
        .await;
    assert_eq!(sent.status, 201, "{}", sent.text());
    assert_eq!(sent.json()["status"], "pending");
    let id = sent.json()["id"].as_str().expect("id").to_owned();
    // The settlement event (from the core's subscription) completes the history row.
    let mut status = String::new();
    for _ in 0..100 {
        let record = world
            .get(&format!("/api/v1/transactions/{id}"), Some(&from.0))
            .await
            .json();
        status = record["status"].as_str().unwrap_or("").to_owned();
        if status == "completed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, "completed");
    assert_eq!(world.balance(&to.0, &to.1).await, "4.00");
    assert_eq!(world.balance(&from.0, &from.1).await, "6.00");
    world.stop().await;
}

#[test]
fn the_binary_has_a_gateway_subcommand() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_paycore"))
        .args(["gateway", "--help"])
        .output()
        .expect("paycore gateway --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--core",
        "--trust",
        "--listen",
        "--postgres-url",
        "--redis-url",
        "--totp-key",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_lost_are_reopened() {
    if !postgres_available().await {
        return;
    }
    let world = World::start(StoreKind::Postgres, |_| {}).await;
    let (olga, _) = world.user("olga@example.com").await;
    let schema = world.schema.clone().expect("schema");
    // An operator ends every connection of this gateway (and only this one's).
    let admin = paycore_gateway::users::postgres::Postgres::connect_n(
        &gateway_support::database_url(),
        None,
        1,
    )
    .await
    .expect("admin connection");
    use paycore_gateway::users::Backend as _;
    let name = paycore_gateway::users::postgres::application_name(Some(&schema));
    let ended = admin
        .query(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = ?1) ended",
            vec![name.into()],
        )
        .await
        .expect("terminate");
    let ended = ended[0][0].int().expect("count");
    assert_eq!(ended, paycore_gateway::users::postgres::CONNECTIONS as i64);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(world.get("/api/v1/users/profile", Some(&olga)).await.status);
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses[10..].iter().all(|s| *s == 200), "{statuses:?}");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_currency_sends_are_refused_up_front_on_every_shard() {
    let world = World::start_sharded(StoreKind::Sqlite, 2, |_| {}).await;
    let [(ann, ann_usd), (ben, ben_usd)] = world.users_on_two_shards("xc", "USD").await;
    let ann_eur = world.wallet(&ann, "EUR").await;
    let ben_eur = world.wallet(&ben, "EUR").await;
    assert_eq!(world.deposit(&ann_usd, "10.00", "USD").await.status, 200);
    assert_eq!(world.deposit(&ben_usd, "10.00", "USD").await.status, 200);
    for (label, token, from, to) in [
        ("one shard", &ann, &ann_usd, &ann_eur),
        ("shard 0 to 1", &ann, &ann_usd, &ben_eur),
        ("shard 1 to 0", &ben, &ben_usd, &ann_eur),
    ] {
        let body = json!({"from_wallet_id": from, "to_wallet_id": to, "amount": "1.00", "currency": "USD"});
        let sent = world
            .send(token, &format!("xc-{}", label.replace(' ', "-")), &body)
            .await;
        assert_eq!(sent.status, 422, "{label}: {}", sent.text());
        assert_eq!(sent.code(), "currency_mismatch", "{label}");
    }
    // Nothing moved, nothing is pending, no history row was written.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for (token, wallet, balance) in [
        (&ann, &ann_usd, "10.00"),
        (&ben, &ben_usd, "10.00"),
        (&ann, &ann_eur, "0.00"),
        (&ben, &ben_eur, "0.00"),
    ] {
        assert_eq!(world.balance(token, wallet).await, balance);
    }
    for token in [&ann, &ben] {
        let history = world.get("/api/v1/transactions", Some(token)).await.json();
        let kinds: Vec<&str> = history["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(|t| t["type"].as_str())
            .collect();
        assert_eq!(kinds, ["deposit"]);
    }
    world.stop().await;
}

/// A provider event id names one event in the whole system: recorded in the gateway's store
/// before money moves, so a re-sent event replays and one with other contents is refused (409
/// and an alert) whichever shard its wallet is on.
async fn provider_event_ids_are_unique(store: StoreKind) {
    let mut world = World::start_sharded(store, 2, |_| {}).await;
    let [(ann, on_0), (ben, on_1)] = world.users_on_two_shards("evt", "USD").await;
    let deposit = |wallet: &str, amount: &str| {
        json!({"id": "evt-unique-1", "type": "deposit.succeeded",
            "data": {"wallet_id": wallet, "amount": amount, "currency": "USD"}})
    };
    let first = world.webhook(&deposit(&on_0, "10.00")).await;
    assert_eq!(first.status, 200, "{}", first.text());
    // The same event again (a provider's retry): the same answer, credited once.
    let again = world.webhook(&deposit(&on_0, "10.00")).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json(), first.json());
    // Keys in another order are the same contents.
    let reordered = json!({"type": "deposit.succeeded", "id": "evt-unique-1",
        "data": {"currency": "USD", "amount": "10.00", "wallet_id": on_0}});
    assert_eq!(world.webhook(&reordered).await.status, 200);
    // The same id with other contents: another wallet (on the other shard), another amount,
    // another type. Refused, whatever the shard.
    for (label, event) in [
        ("other shard", deposit(&on_1, "10.00")),
        ("other amount", deposit(&on_0, "99.00")),
        (
            "other type",
            json!({"id": "evt-unique-1", "type": "withdrawal.failed",
                "data": {"withdrawal_id": "00000000-0000-4000-8000-000000000000"}}),
        ),
    ] {
        let refused = world.webhook(&event).await;
        assert_eq!(refused.status, 409, "{label}: {}", refused.text());
        assert_eq!(refused.code(), "event_id_reused", "{label}");
    }
    assert_eq!(world.balance(&ann, &on_0).await, "10.00");
    assert_eq!(world.balance(&ben, &on_1).await, "0.00");
    let metrics = String::from_utf8_lossy(&world.get("/metrics", None).await.body).into_owned();
    assert!(
        metrics.contains("paycore_gateway_webhook_event_conflicts_total 3"),
        "{metrics}"
    );
    // Another gateway on the same store knows the id too.
    let second = world.second_gateway().await;
    let body = deposit(&on_1, "10.00").to_string();
    let signature = paycore_gateway::sign_webhook(
        gateway_support::WEBHOOK_SECRET.as_bytes(),
        now_secs(),
        body.as_bytes(),
    );
    let elsewhere = call_at(
        second.addr,
        "POST",
        "/api/v1/webhooks/provider",
        None,
        &[("paycore-signature", &signature)],
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(elsewhere.status, 409, "{}", elsewhere.text());
    second.stop().await;
    // Recorded before the core is asked: with the core gone the event is answered 503, and
    // the id is taken all the same.
    if let Some(mut node) = world.node.take() {
        node.stop();
    }
    let pending = json!({"id": "evt-unique-2", "type": "deposit.succeeded",
        "data": {"wallet_id": on_0, "amount": "1.00", "currency": "USD"}});
    let unavailable = world.webhook(&pending).await;
    assert_eq!(unavailable.status, 503, "{}", unavailable.text());
    let mut other = pending.clone();
    other["data"]["amount"] = json!("2.00");
    let refused = world.webhook(&other).await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_event_ids_are_unique_on_sqlite() {
    provider_event_ids_are_unique(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_event_ids_are_unique_on_postgres() {
    if !postgres_available().await {
        return;
    }
    provider_event_ids_are_unique(StoreKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_every_access_token_on_every_gateway() {
    let world = World::start(StoreKind::Sqlite, |_| {}).await;
    let second = world.second_gateway().await;
    let (phone, _) = world.user("gen@example.com").await;
    let laptop = world.login("gen@example.com").await;
    let profile = |addr, token: String| async move {
        call_at(
            addr,
            "GET",
            "/api/v1/users/profile",
            Some(&token),
            &[],
            None,
        )
        .await
    };
    assert_eq!(profile(second.addr, laptop.clone()).await.status, 200);
    let logout = world
        .call("POST", "/api/v1/users/logout", Some(&phone), &[], None)
        .await;
    assert_eq!(logout.status, 204, "{}", logout.text());
    // Every access token of the user, on every gateway, at once.
    for (addr, token) in [
        (world.addr, phone.clone()),
        (world.addr, laptop.clone()),
        (second.addr, laptop.clone()),
    ] {
        let refused = profile(addr, token).await;
        assert_eq!(refused.status, 401, "{}", refused.text());
        assert_eq!(refused.code(), "token_revoked");
    }
    // A new login works.
    let fresh = world.login("gen@example.com").await;
    assert_eq!(profile(second.addr, fresh).await.status, 200);
    second.stop().await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_theft_ends_every_access_token() {
    let world = World::start(StoreKind::Sqlite, |_| {}).await;
    let (_, _) = world.user("theft@example.com").await;
    let login = world
        .post(
            "/api/v1/users/login",
            None,
            &json!({"email": "theft@example.com", "password": gateway_support::PASSWORD}),
        )
        .await
        .json();
    let stolen = login["refresh_token"].as_str().expect("refresh").to_owned();
    // The thief refreshes first and holds a fresh access token.
    let thief = world
        .post(
            "/api/v1/users/refresh",
            None,
            &json!({"refresh_token": stolen}),
        )
        .await;
    assert_eq!(thief.status, 200, "{}", thief.text());
    let thief_token = thief.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(
        world
            .get("/api/v1/users/profile", Some(&thief_token))
            .await
            .status,
        200
    );
    // The owner presents the same (now spent) refresh token: reuse, so every token ends.
    let owner = world
        .post(
            "/api/v1/users/refresh",
            None,
            &json!({"refresh_token": stolen}),
        )
        .await;
    assert_eq!(owner.status, 401, "{}", owner.text());
    let second = world.second_gateway().await;
    for (addr, token) in [
        (world.addr, &thief_token),
        (second.addr, &thief_token),
        (
            world.addr,
            &login["access_token"].as_str().expect("t").to_owned(),
        ),
    ] {
        let refused = call_at(addr, "GET", "/api/v1/users/profile", Some(token), &[], None).await;
        assert_eq!(refused.status, 401, "{}", refused.text());
        assert_eq!(refused.code(), "token_revoked");
    }
    second.stop().await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_are_created_explicitly_and_act_with_two_factor() {
    // Registering with an address that used to be configured as an admin's makes a user.
    let world = World::start(StoreKind::Sqlite, |_| {}).await;
    let (squatter, _) = world.user(ADMIN_EMAIL).await;
    let profile = world
        .get("/api/v1/users/profile", Some(&squatter))
        .await
        .json();
    assert_eq!(profile["role"], "user");
    let (owner, _) = world.user("owner@example.com").await;
    let wallet = world.wallet(&owner, "USD").await;
    let freeze = format!("/api/v1/admin/wallets/{wallet}/freeze");
    let unfreeze = format!("/api/v1/admin/wallets/{wallet}/unfreeze");
    let refused = world
        .call("POST", &freeze, Some(&squatter), &[], None)
        .await;
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (403, "forbidden")
    );

    // `paycore admin create`; without a 2FA login no admin action is allowed.
    let admin = world.admin("root@example.com").await;
    let password_only = world
        .call("POST", &freeze, Some(&admin.password_token), &[], None)
        .await;
    assert_eq!(
        (password_only.status, password_only.code().as_str()),
        (403, "two_factor_required"),
        "{}",
        password_only.text()
    );
    for path in [&freeze, &unfreeze] {
        let done = world
            .call("POST", path, Some(&admin.token), &[], None)
            .await;
        assert_eq!(done.status, 200, "{path}: {}", done.text());
    }
    // Logging in again asks for a code.
    let login = world
        .post(
            "/api/v1/users/login",
            None,
            &json!({"email": "root@example.com", "password": gateway_support::PASSWORD}),
        )
        .await;
    assert_eq!(login.json()["two_factor_required"], true);

    // `paycore admin revoke`: the role ends at once, on the tokens already issued too.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_paycore"))
        .args(["admin", "revoke", "--email", "root@example.com", "--sqlite"])
        .arg(&world.gateway.as_ref().expect("gateway").state.args.sqlite)
        .env_remove("DATABASE_URL")
        .output()
        .expect("paycore admin revoke");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let revoked = world
        .call("POST", &freeze, Some(&admin.token), &[], None)
        .await;
    assert_eq!(revoked.status, 401, "{}", revoked.text());

    // The old way to make admins is refused at start rather than ignored.
    let mut args = world.gateway.as_ref().expect("gateway").state.args.clone();
    args.admin_emails = ADMIN_EMAIL.into();
    let Err(error) = paycore_gateway::state(args).await else {
        panic!("a gateway with --admin-emails must refuse to start")
    };
    assert!(error.contains("paycore admin create"), "{error}");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_up_applies_to_every_money_moving_route() {
    let world = World::start(StoreKind::Sqlite, |args| {
        args.two_factor_above = "USD:50".into();
    })
    .await;
    let (payee, _) = world.user("payee@example.com").await;
    let payee_wallet = world.wallet(&payee, "USD").await;
    // route, body for an amount. Every route that takes money out of a user's wallet.
    type Body = Box<dyn Fn(&str, &str) -> serde_json::Value>;
    let payee_for_send = payee_wallet.clone();
    let routes: Vec<(&str, &str, Body)> = vec![
        (
            "send",
            "/api/v1/transactions/send",
            Box::new(
                move |wallet: &str, amount: &str| json!({"from_wallet_id": wallet, "to_wallet_id": payee_for_send, "amount": amount, "currency": "USD"}),
            ),
        ),
        (
            "withdraw",
            "/api/v1/withdrawals",
            Box::new(
                |wallet: &str, amount: &str| json!({"wallet_id": wallet, "amount": amount, "currency": "USD", "destination": "DE89370400440532013000"}),
            ),
        ),
    ];
    for (route, path, body) in &routes {
        let email = format!("step-{route}@example.com");
        let (token, _) = world.user(&email).await;
        let wallet = world.wallet(&token, "USD").await;
        assert_eq!(world.deposit(&wallet, "500.00", "USD").await.status, 200);
        let call = |key: &str, amount: &str, code: Option<&str>, token: &str| {
            let body = body(&wallet, amount).to_string();
            let mut headers = vec![("idempotency-key", key.to_owned())];
            if let Some(code) = code {
                headers.push(("x-2fa-code", code.to_owned()));
            }
            let token = token.to_owned();
            let world = &world;
            async move {
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                world
                    .call("POST", path, Some(&token), &headers, Some(body.as_bytes()))
                    .await
            }
        };
        // Above the amount without 2FA: refused; at or below it: no code needed.
        let refused = call("big-0", "50.01", None, &token).await;
        assert_eq!(
            (refused.status, refused.code().as_str()),
            (403, "two_factor_required"),
            "{route}: {}",
            refused.text()
        );
        assert_eq!(
            call("small-0", "50.00", None, &token).await.status,
            201,
            "{route}"
        );
        let (secret, token, used) = world.enable_two_factor(&email, &token).await;
        let missing = call("big-1", "60.00", None, &token).await;
        assert_eq!(
            (missing.status, missing.code().as_str()),
            (401, "two_factor_code_required"),
            "{route}"
        );
        let wrong = call("big-1", "60.00", Some("000000"), &token).await;
        assert_eq!(wrong.status, 401, "{route}: {}", wrong.text());
        // The same Idempotency-Key with the code: a refused step-up decided nothing.
        let code = World::unused_code(&secret, used);
        let done = call("big-1", "60.00", Some(&code), &token).await;
        assert_eq!(done.status, 201, "{route}: {}", done.text());
        assert_eq!(
            call("small-1", "10.00", None, &token).await.status,
            201,
            "{route}"
        );
        let wallet_now = world
            .get(&format!("/api/v1/wallets/{wallet}"), Some(&token))
            .await
            .json();
        assert_eq!(wallet_now["available"], "380.00", "{route}");
    }
    world.stop().await;
}
