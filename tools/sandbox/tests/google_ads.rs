//! Google Ads click-conversion uploads and OAuth over real HTTP.

mod common;

use common::*;
use serde_json::{json, Value};

/// Error family, code and field path below `conversions[n]`.
type Expected = (&'static str, &'static str, Vec<(&'static str, Option<i64>)>);

fn location(error: &Value) -> Vec<(String, Option<i64>)> {
    error["location"]["fieldPathElements"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["fieldName"].as_str().unwrap_or("").to_owned(),
                        e["index"].as_i64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn row_errors(v: &Value) -> Vec<Value> {
    v["partialFailureError"]["details"][0]["errors"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_valid_upload_is_accepted_and_visible() {
    let h = start().await;
    let token = h.google_token().await;
    let body = google_body(vec![
        google_row(h.now(), "Cj0KCQjwgclid001", "order-1"),
        google_row(h.now(), "Cj0KCQjwgclid002", "order-2"),
    ]);
    let (status, headers, v) = h.google_with(CUSTOMER, &token, DEV_TOKEN, &body).await;
    assert_eq!(status, 200, "{v}");
    assert!(headers.get("request-id").is_some());
    assert!(v.get("partialFailureError").is_none(), "{v}");
    let r = &v["results"][1];
    assert_eq!(r["gclid"], "Cj0KCQjwgclid002");
    assert_eq!(
        r["conversionAction"],
        format!("customers/{CUSTOMER}/conversionActions/{ACTION}")
    );
    assert!(r["conversionDateTime"].as_str().is_some());

    let listed = h
        .get(&format!(
            "/admin/events?platform=google_ads&account={CUSTOMER}"
        ))
        .await;
    assert_eq!(listed["total"], 2);
    let by_order = h.get("/admin/events?event_id=order-1").await;
    assert_eq!(by_order["items"][0]["payload"]["currencyCode"], "EUR");
}

#[tokio::test]
async fn snake_case_fields_and_user_identifier_only_rows_are_accepted() {
    let h = start().await;
    let token = h.google_token().await;
    let body = json!({
        "partial_failure": true,
        "conversions": [{
            "conversion_action": format!("customers/{CUSTOMER}/conversionActions/{ACTION}"),
            "conversion_date_time": google_time(h.now() - 60),
            "order_id": "lead-1",
            "user_identifiers": [{"hashed_email": sha('a')}],
            "consent": {"ad_user_data": "DENIED"},
        }],
    });
    let (status, v) = h.google(&token, &body).await;
    assert_eq!(status, 200);
    assert!(v.get("partialFailureError").is_none(), "{v}");
    assert!(v["results"][0]["userIdentifiers"].is_array(), "{v}");
}

#[tokio::test]
async fn bad_rows_fail_alone_with_their_error_and_location() {
    let h = start().await;
    let token = h.google_token().await;
    let now = h.now();
    let action = format!("customers/{CUSTOMER}/conversionActions/{ACTION}");
    let mut rows = vec![google_row(now, "Cj0KCQjwvalid0001", "ok-1")];
    let mut expect: Vec<Expected> = Vec::new();
    let mut add = |row: Value,
                   family: &'static str,
                   code: &'static str,
                   fields: Vec<(&'static str, Option<i64>)>| {
        rows.push(row);
        expect.push((family, code, fields));
    };
    let mut r = google_row(now, "Cj0KCQjwold000001", "e1");
    r["conversionDateTime"] = json!(google_time(now - 91 * 86_400));
    add(
        r,
        "conversionUploadError",
        "EXPIRED_EVENT",
        vec![("conversion_date_time", None)],
    );
    add(
        google_row(now, "not a gclid!", "e2"),
        "conversionUploadError",
        "UNPARSEABLE_GCLID",
        vec![("gclid", None)],
    );
    let mut r = google_row(now, "Cj0KCQjwbadid0001", "e3");
    r["userIdentifiers"][1]["hashedPhoneNumber"] = json!("+4915112345678");
    add(
        r,
        "conversionUploadError",
        "INVALID_USER_IDENTIFIER",
        vec![("user_identifiers", Some(1)), ("hashed_phone_number", None)],
    );
    let mut r = google_row(now, "Cj0KCQjwnotz00001", "e4");
    r["conversionDateTime"] = json!("2026-01-01 10:00:00");
    add(
        r,
        "dateError",
        "INVALID_STRING_DATE_TIME_SECONDS_WITH_OFFSET",
        vec![("conversion_date_time", None)],
    );
    let mut r = google_row(now, "Cj0KCQjwother0001", "e5");
    r["conversionAction"] = json!("customers/9999999999/conversionActions/111111111");
    add(
        r,
        "conversionUploadError",
        "NO_CONVERSION_ACTION_FOUND",
        vec![("conversion_action", None)],
    );
    let mut r = google_row(now, "Cj0KCQjwbraid0001", "e6");
    remove(&mut r, "gclid");
    r["gbraid"] = json!("0AAAAAgbraid01");
    r["wbraid"] = json!("CjkKwbraid0001");
    add(
        r,
        "conversionUploadError",
        "GBRAID_WBRAID_BOTH_SET",
        vec![("wbraid", None)],
    );
    let mut r = google_row(now, "Cj0KCQjwcurr00001", "e7");
    r["currencyCode"] = json!("eur");
    add(
        r,
        "currencyCodeError",
        "UNSUPPORTED",
        vec![("currency_code", None)],
    );
    let mut r = google_row(now, "Cj0KCQjwmany00001", "e8");
    r["userIdentifiers"] = json!((0..6)
        .map(|_| json!({"hashedEmail": sha('a')}))
        .collect::<Vec<_>>());
    add(
        r,
        "collectionSizeError",
        "TOO_MANY",
        vec![("user_identifiers", None)],
    );
    let mut r = google_row(now, "Cj0KCQjwnone00001", "e9");
    remove(&mut r, "gclid");
    remove(&mut r, "userIdentifiers");
    add(r, "fieldError", "REQUIRED", vec![("gclid", None)]);
    let mut r = google_row(now, "Cj0KCQjwpers00001", "e10");
    r["consent"] = json!({"adUserData": "GRANTED", "adPersonalization": "GRANTED"});
    add(
        r,
        "fieldError",
        "VALUE_MUST_BE_UNSET",
        vec![("consent", None), ("ad_personalization", None)],
    );
    let mut r = google_row(now, "Cj0KCQjwpii000001", "e11");
    r["orderId"] = json!("jane@example.com");
    add(
        r,
        "conversionUploadError",
        "ORDER_ID_CONTAINS_PII",
        vec![("order_id", None)],
    );
    let mut r = google_row(now, "Cj0KCQjwmalf00001", "e12");
    r["conversionAction"] = json!(format!("{action}/extra"));
    add(
        r,
        "requestError",
        "RESOURCE_NAME_MALFORMED",
        vec![("conversion_action", None)],
    );
    let mut r = google_row(now, "Cj0KCQjwfut000001", "e13");
    r["conversionDateTime"] = json!(google_time(now + 86_400));
    add(
        r,
        "dateError",
        "LATER_THAN_MAXIMUM_DATE",
        vec![("conversion_date_time", None)],
    );

    let (status, v) = h.google(&token, &google_body(rows.clone())).await;
    assert_eq!(status, 200, "{v}");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), rows.len());
    assert_eq!(results[0]["gclid"], "Cj0KCQjwvalid0001");
    assert!(results[1..].iter().all(|r| r == &json!({})), "{v}");
    let pfe = &v["partialFailureError"];
    assert_eq!(pfe["code"], 3);
    assert!(pfe["details"][0]["@type"].as_str().is_some_and(
        |t| t == "type.googleapis.com/google.ads.googleads.v23.errors.GoogleAdsFailure"
    ));
    let errors = row_errors(&v);
    assert_eq!(errors.len(), expect.len(), "{v}");
    for (i, (e, (family, code, fields))) in errors.iter().zip(&expect).enumerate() {
        assert_eq!(e["errorCode"][*family], *code, "row {}: {e}", i + 1);
        let mut want = vec![("conversions".to_owned(), Some(i as i64 + 1))];
        want.extend(fields.iter().map(|(f, n)| ((*f).to_owned(), *n)));
        assert_eq!(location(e), want, "row {}: {e}", i + 1);
    }
    assert_eq!(h.get("/admin/events?platform=google_ads").await["total"], 1);
    assert_eq!(
        h.get("/admin/rejections?platform=google_ads").await["total"],
        expect.len()
    );
    let stats = h.get("/admin/stats").await;
    assert_eq!(stats["requests"]["google_ads"]["partial"], 1);
}

#[tokio::test]
async fn a_repeated_order_id_is_a_duplicate() {
    let h = start().await;
    let token = h.google_token().await;
    let (_, v) = h
        .google(
            &token,
            &google_body(vec![google_row(h.now(), "Cj0KCQjwfirst0001", "order-9")]),
        )
        .await;
    assert!(v.get("partialFailureError").is_none(), "{v}");
    // Same order id, other click: the order id is already used.
    let (status, v) = h
        .google(
            &token,
            &google_body(vec![google_row(h.now(), "Cj0KCQjwsecond001", "order-9")]),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        row_errors(&v)[0]["errorCode"]["conversionUploadError"],
        "ORDER_ID_ALREADY_IN_USE"
    );
    // Twice in one request: the second is DUPLICATE_ORDER_ID.
    let rows = vec![
        google_row(h.now(), "Cj0KCQjwthird0001", "order-10"),
        google_row(h.now(), "Cj0KCQjwfourth001", "order-10"),
    ];
    let (_, v) = h.google(&token, &google_body(rows)).await;
    assert_eq!(v["results"][0]["gclid"], "Cj0KCQjwthird0001");
    assert_eq!(
        row_errors(&v)[0]["errorCode"]["conversionUploadError"],
        "DUPLICATE_ORDER_ID"
    );
    // Same click, action and time without an order id.
    let mut a = google_row(h.now(), "Cj0KCQjwclick0001", "x");
    remove(&mut a, "orderId");
    let (_, v) = h.google(&token, &google_body(vec![a.clone()])).await;
    assert!(v.get("partialFailureError").is_none(), "{v}");
    let (_, v) = h.google(&token, &google_body(vec![a])).await;
    assert_eq!(
        row_errors(&v)[0]["errorCode"]["conversionUploadError"],
        "CLICK_CONVERSION_ALREADY_EXISTS"
    );

    assert_eq!(
        h.get("/admin/duplicates?platform=google_ads").await["total"],
        3
    );
    assert_eq!(h.get("/admin/events?event_id=order-9").await["total"], 1);
    assert_eq!(
        h.get("/admin/stats").await["events"]["google_ads"]["duplicates"],
        3
    );
    // An order id stays used however long ago it was.
    h.clock.advance_ms(60 * 86_400 * 1000);
    let token = h.google_token().await;
    let (_, v) = h
        .google(
            &token,
            &google_body(vec![google_row(h.now(), "Cj0KCQjwlater0001", "order-9")]),
        )
        .await;
    assert_eq!(
        row_errors(&v)[0]["errorCode"]["conversionUploadError"],
        "ORDER_ID_ALREADY_IN_USE"
    );
}

#[tokio::test]
async fn validate_only_records_nothing() {
    let h = start().await;
    let token = h.google_token().await;
    let mut body = google_body(vec![google_row(h.now(), "Cj0KCQjwvalid0001", "v-1")]);
    body["validateOnly"] = json!(true);
    let (status, v) = h.google(&token, &body).await;
    assert_eq!(status, 200);
    assert!(v.get("partialFailureError").is_none(), "{v}");
    assert_eq!(h.get("/admin/events").await["total"], 0);
    body["validateOnly"] = json!(false);
    let (_, v) = h.google(&token, &body).await;
    assert!(v.get("partialFailureError").is_none(), "{v}");
}

#[tokio::test]
async fn whole_request_errors() {
    let h = start().await;
    let token = h.google_token().await;
    let rows: Vec<Value> = (0..2001)
        .map(|i| google_row(h.now(), &format!("Cj0KCQjwmany{i:05}"), &format!("m{i}")))
        .collect();
    let (status, v) = h.google(&token, &google_body(rows)).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(
        v["error"]["details"][0]["errors"][0]["errorCode"]["conversionUploadError"],
        "TOO_MANY_CONVERSIONS_IN_REQUEST"
    );

    let mut body = google_body(vec![google_row(h.now(), "Cj0KCQjwvalid0001", "p-1")]);
    body["partialFailure"] = json!(false);
    let (status, v) = h.google(&token, &body).await;
    assert_eq!(status, 400);
    assert_eq!(
        v["error"]["details"][0]["errors"][0]["errorCode"]["partialFailureError"],
        "PARTIAL_FAILURE_MODE_REQUIRED"
    );

    let mut row = google_row(h.now(), "Cj0KCQjwvalid0001", "c-1");
    row["consent"]["adUserData"] = json!("YES");
    let (status, v) = h
        .google(
            &token,
            &google_body(vec![google_row(h.now(), "Cj0KCQjwvalid0002", "c-0"), row]),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("conversions[1].consent.ad_user_data"),
        "{v}"
    );

    let mut row = google_row(h.now(), "Cj0KCQjwvalid0001", "u-1");
    row["clickId"] = json!("x");
    let (status, v) = h.google(&token, &google_body(vec![row])).await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("Unknown name \"click_id\""),
        "{v}"
    );
    assert_eq!(h.get("/admin/events").await["total"], 0);
}

#[tokio::test]
async fn authentication_and_permission_errors() {
    let h = start().await;
    let token = h.google_token().await;
    let body = google_body(vec![google_row(h.now(), "Cj0KCQjwvalid0001", "a-1")]);
    let (status, _, v) = h
        .google_with(CUSTOMER, "ya29.unknown", DEV_TOKEN, &body)
        .await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(v["error"]["code"], 401);
    let (status, _, v) = h
        .google_with(CUSTOMER, &token, "wrong-dev-token", &body)
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        v["error"]["details"][0]["errors"][0]["errorCode"]["authenticationError"],
        "DEVELOPER_TOKEN_INVALID"
    );
    let (status, _, v) = h.google_with("7777777777", &token, DEV_TOKEN, &body).await;
    assert_eq!(status, 403);
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    let resp = h
        .http
        .post(h.url(&format!("/v23/customers/{CUSTOMER}:uploadClickConversions")))
        .header("developer-token", DEV_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 401);
    let resp = h
        .http
        .post(h.url(&format!("/v23/customers/{CUSTOMER}:uploadCallConversions")))
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 404);
    // A customer that has not accepted the data terms cannot send user identifiers.
    let mut row = google_row(h.now(), "Cj0KCQjwterms0001", "t-1");
    row["conversionAction"] = json!(format!(
        "customers/{NO_TERMS_CUSTOMER}/conversionActions/{ACTION}"
    ));
    let (_, _, v) = h
        .google_with(
            NO_TERMS_CUSTOMER,
            &token,
            DEV_TOKEN,
            &google_body(vec![row]),
        )
        .await;
    assert_eq!(
        row_errors(&v)[0]["errorCode"]["conversionUploadError"],
        "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS"
    );
}

#[tokio::test]
async fn tokens_expire_and_a_refresh_gets_a_working_one() {
    let h = start().await;
    let token = h.google_token().await;
    let body = google_body(vec![google_row(h.now(), "Cj0KCQjwvalid0001", "r-1")]);
    assert_eq!(h.google(&token, &body).await.0, 200);
    h.clock.advance_ms(3600 * 1000);
    let (status, v) = h.google(&token, &body).await;
    assert_eq!(status, 401);
    assert_eq!(
        v["error"]["details"][0]["errors"][0]["errorCode"]["authenticationError"],
        "OAUTH_TOKEN_EXPIRED"
    );
    let fresh = h.google_token().await;
    assert_ne!(fresh, token);
    let body = google_body(vec![google_row(h.now(), "Cj0KCQjwvalid0002", "r-2")]);
    assert_eq!(h.google(&fresh, &body).await.0, 200);
    // The admin API can expire every token at once.
    let resp = h
        .http
        .post(h.url("/admin/oauth/expire"))
        .send()
        .await
        .expect("expire");
    assert_eq!(resp.status(), 200);
    assert_eq!(h.google(&fresh, &body).await.0, 401);
}

#[tokio::test]
async fn the_token_endpoint_refuses_bad_grants() {
    let h = start().await;
    let post = |form: Vec<(&'static str, &'static str)>| {
        let req = h.http.post(h.url("/token")).form(&form);
        async move {
            let r = req.send().await.expect("POST");
            let status = r.status().as_u16();
            let v: Value = r.json().await.expect("json");
            (status, v["error"].as_str().unwrap_or("").to_owned())
        }
    };
    let ok = vec![
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
        ("refresh_token", REFRESH_TOKEN),
    ];
    let mut bad_refresh = ok.clone();
    bad_refresh[3] = ("refresh_token", "1//revoked");
    assert_eq!(post(bad_refresh).await, (400, "invalid_grant".into()));
    let mut bad_secret = ok.clone();
    bad_secret[2] = ("client_secret", "nope");
    assert_eq!(post(bad_secret).await, (401, "invalid_client".into()));
    let mut bad_grant = ok.clone();
    bad_grant[0] = ("grant_type", "password");
    assert_eq!(
        post(bad_grant).await,
        (400, "unsupported_grant_type".into())
    );
    let resp = h
        .http
        .post(h.url("/token"))
        .form(&ok)
        .send()
        .await
        .expect("POST");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
}

#[tokio::test]
async fn a_quota_answers_resource_exhausted_with_retry_after() {
    let h = start().await;
    let token = h.google_token().await;
    h.put_fault("google_ads", "*", json!({"quota_per_sec": 5}))
        .await;
    let body = google_body(vec![google_row(h.now(), "Cj0KCQjwvalid0001", "q")]);
    let (mut ok, mut throttled) = (0, 0);
    for _ in 0..20 {
        let (status, headers, v) = h.google_with(CUSTOMER, &token, DEV_TOKEN, &body).await;
        match status {
            200 => ok += 1,
            429 => {
                throttled += 1;
                assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
                assert_eq!(v["error"]["code"], 429);
                let retry: u64 = headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("Retry-After");
                assert!(retry >= 1);
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((ok, throttled), (5, 15));
}

#[tokio::test]
async fn outages_and_error_rates_happen_when_configured() {
    let h = start().await;
    let token = h.google_token().await;
    let body = google_body(vec![google_row(h.now(), "Cj0KCQjwvalid0001", "o")]);
    h.put_fault("google_ads", CUSTOMER, json!({"outage_secs": 60}))
        .await;
    let (status, v) = h.google(&token, &body).await;
    assert_eq!(
        (status, v["error"]["status"].clone()),
        (503, json!("UNAVAILABLE"))
    );
    h.clear_fault("google_ads", CUSTOMER).await;
    assert_eq!(h.google(&token, &body).await.0, 200);
    h.put_fault(
        "google_ads",
        "*",
        json!({"error_rate": 1.0, "error": "503"}),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(h.google(&token, &body).await.0, 503);
    }
    h.put_fault(
        "google_ads",
        "*",
        json!({"error_rate": 1.0, "error": "500"}),
    )
    .await;
    let (status, v) = h.google(&token, &body).await;
    assert_eq!(
        (status, v["error"]["status"].clone()),
        (500, json!("INTERNAL"))
    );
}
