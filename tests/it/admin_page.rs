//! The admin web page in a real headless Chromium (support/webdriver.rs): sessions made by
//! proxied requests, then the token form, the counters, the list and its paging, the search,
//! one session's data, a patch, a delete through the in-page confirmation, and hostile session
//! data shown as text with no script run, no element made from it and no dialog; the user
//! column, the search by user and "sign out everywhere". Saves the screenshot docs/src/admin.png.

use std::collections::BTreeSet;

use http::Method;
use serde_json::{Value, json};

use crate::support::webdriver::{Chrome, Locator};
use crate::support::{App, Browser, TestProxy, request};

const TOKEN: &str = "page-test-admin-token-0123456789";

/// Where the screenshot of the page goes (committed, shown in docs/src/admin-api.md).
const SCREENSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/src/admin.png");

/// Markup and script in values and in a key: the page must show it as text.
const HOSTILE: &str = r#"{"name":"<script>alert(1)</script>","bio":"\"><img src=x onerror=alert(1)>","<img src=x onerror=\"window.__xss=1\">":"<script>window.__xss=1</script>","note":"</pre><script>window.__xss=2</script>"}"#;

/// A user's browser whose first request through the proxy makes a session holding `data`.
async fn session_with(proxy: &TestProxy, data: &str) -> (Browser, String) {
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", data)])
        .await;
    let id = b.cookie.clone().expect("the proxy made a session");
    (b, crate::support::handle(&id))
}

/// The session as the API has it.
async fn api_session(proxy: &TestProxy, id: &str) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let r = request(proxy.admin_addr(), Method::GET, &format!("/sessions/{id}"))
        .client_sends(&[("authorization", &auth)])
        .await;
    (r.status.as_u16(), r.json())
}

/// The JSON text of the open session's `<pre>`, parsed.
async fn shown_data(chrome: &Chrome) -> Value {
    let text = text_of(chrome, "#detail-data").await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the <pre> is not JSON ({e}): {text}"))
}

async fn text_of(chrome: &Chrome, css: &str) -> String {
    chrome
        .client()
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Whether the element `css` carries the `hidden` attribute.
async fn is_hidden(chrome: &Chrome, css: &str) -> bool {
    chrome
        .client()
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .attr("hidden")
        .await
        .unwrap()
        .is_some()
}

async fn click(chrome: &Chrome, css: &str) {
    chrome
        .client()
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

async fn type_into(chrome: &Chrome, css: &str, text: &str) {
    let field = chrome.client().find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// The ids the table lists, from each row's full-id `title`.
async fn listed_ids(chrome: &Chrome) -> Vec<String> {
    let ids = chrome
        .client()
        .execute(
            "return [...document.querySelectorAll('#session-rows tr button')].map(b => b.title)",
            Vec::new(),
        )
        .await
        .unwrap();
    serde_json::from_value(ids).unwrap()
}

async fn wait_rows(chrome: &Chrome, n: usize) {
    chrome
        .wait_for(
            &format!("{n} rows in the table"),
            &format!("return document.querySelectorAll('#session-rows tr').length === {n}"),
        )
        .await;
}

/// Waits until the message area says something containing `part`; returns its class.
async fn wait_message(chrome: &Chrome, part: &str) -> String {
    let part_js = serde_json::to_string(part).unwrap();
    chrome
        .wait_for(
            &format!("a message containing {part:?}"),
            &format!(
                "const m = document.getElementById('message'); \
                 return !m.hidden && m.textContent.includes({part_js}) && m.className"
            ),
        )
        .await
        .as_str()
        .unwrap()
        .to_owned()
}

/// Opens the session `id` by clicking its row, and waits for its data.
async fn open_row(chrome: &Chrome, id: &str) {
    click(chrome, &format!("#session-rows button[title='{id}']")).await;
    wait_open(chrome, id).await;
}

async fn wait_open(chrome: &Chrome, id: &str) {
    chrome
        .wait_for(
            &format!("session {id} open"),
            &format!(
                "return !document.getElementById('detail').hidden && \
                 document.querySelector('#detail-meta dd').textContent === '{id}'"
            ),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_in_a_real_browser() {
    let app = App::start().await;
    let toml = format!(
        "[session]\nuser_key = \"user\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    );
    let proxy = TestProxy::start(&app, &toml).await;
    let admin = proxy.admin_addr();

    // Sessions, made the way an app makes them.
    let (mut ada, ada_id) = session_with(&proxy, r#"{"user":"ada"}"#).await;
    let (_, grace_id) = session_with(
        &proxy,
        r#"{"user":"grace","roles":["editor"],"locale":"en-US","cart":[{"sku":"CB-1959","title":"COBOL pocket guide","qty":2}]}"#,
    )
    .await;
    let (mut alan, alan_id) = session_with(&proxy, r#"{"user":"alan","roles":["reader"]}"#).await;
    let (mut guest, guest_id) = session_with(
        &proxy,
        r#"{"cart":[{"sku":"TEA-EG-250","title":"Earl Grey, 250 g","qty":3}],"currency":"EUR"}"#,
    )
    .await;
    let (_, barbara_id) = session_with(
        &proxy,
        r#"{"user":"barbara","roles":["admin","billing"],"last_order":"A-20931"}"#,
    )
    .await;
    let (_, hostile_id) = session_with(&proxy, HOSTILE).await;
    let all: BTreeSet<String> = [
        &ada_id,
        &grace_id,
        &alan_id,
        &guest_id,
        &barbara_id,
        &hostile_id,
    ]
    .into_iter()
    .cloned()
    .collect();
    // Traffic for the counters: alan picks a locale, ada browses and hits a missing page.
    alan.get("/settings")
        .app_responds_with(&[("X-Session-Update", r#"{"locale":"en-GB"}"#)])
        .await;
    ada.get("/orders").await;
    ada.get("/missing").app_status(404).await;

    let chrome = Chrome::start().await;
    let client = chrome.client();
    client.goto(&format!("http://{admin}/")).await.unwrap();
    assert_eq!(client.title().await.unwrap(), "session-proxy admin");
    // Record every policy violation from here on (a WebDriver script is not bound by the
    // page's CSP; the page's own could not install this inline anyway).
    client
        .execute(
            "window.__violations = []; \
             document.addEventListener('securitypolicyviolation', \
               e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));",
            Vec::new(),
        )
        .await
        .unwrap();

    // No token yet: the API said 401, the page asks for one.
    chrome
        .wait_for(
            "the token form",
            "return !document.getElementById('auth').hidden",
        )
        .await;
    assert_eq!(wait_message(&chrome, "admin token").await, "message error");
    assert!(is_hidden(&chrome, "#app").await);

    // A wrong token is refused and the form stays.
    type_into(&chrome, "#token-input", "not-the-token").await;
    click(&chrome, "#token-save").await;
    wait_message(&chrome, "The token was refused").await;

    // The right one: counters and the table.
    type_into(&chrome, "#token-input", TOKEN).await;
    click(&chrome, "#token-save").await;
    wait_rows(&chrome, all.len()).await;
    let listed: BTreeSet<String> = listed_ids(&chrome).await.into_iter().collect();
    assert_eq!(listed, all);
    let stored = client
        .execute(
            "return [sessionStorage.getItem('session-proxy-admin-token'), document.cookie]",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        stored,
        json!([TOKEN, ""]),
        "the token lives in sessionStorage, never a cookie"
    );
    let short = text_of(&chrome, &format!("#session-rows button[title='{ada_id}']")).await;
    assert_eq!(short, format!("{}\u{2026}", &ada_id[..8]));
    let counters = client
        .execute(
            "return Object.fromEntries([...document.querySelectorAll('#metrics .counter')]\
               .map(c => [c.querySelector('.counter-label').textContent, \
                          c.querySelector('.counter-value').textContent]))",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(counters["Sessions created"], "6", "{counters}");
    assert_eq!(counters["Live sessions"], "6", "{counters}");
    assert_eq!(counters["Requests 2xx"], "8", "{counters}");
    assert_eq!(counters["Sessions updated"], "1", "{counters}");
    assert_eq!(counters["Requests 4xx"], "1", "{counters}");
    assert_eq!(counters["Requests 5xx"], "0", "{counters}");
    assert_eq!(counters["Store errors"], "0", "{counters}");
    assert_eq!(counters["Sessions destroyed"], "0", "{counters}");

    // Paging: five a page, Next, First; the pages together hold every session once.
    client
        .find(Locator::Css("#page-size"))
        .await
        .unwrap()
        .select_by_value("5")
        .await
        .unwrap();
    wait_rows(&chrome, 5).await;
    let first_page = listed_ids(&chrome).await;
    click(&chrome, "#next-page").await;
    wait_rows(&chrome, 1).await;
    let second_page = listed_ids(&chrome).await;
    let together: BTreeSet<String> = first_page.iter().chain(&second_page).cloned().collect();
    assert_eq!(together, all);
    assert!(text_of(&chrome, "#page-info").await.starts_with("Page 2"));
    click(&chrome, "#first-page").await;
    wait_rows(&chrome, 5).await;
    assert_eq!(listed_ids(&chrome).await, first_page);
    client
        .find(Locator::Css("#page-size"))
        .await
        .unwrap()
        .select_by_value("25")
        .await
        .unwrap();
    wait_rows(&chrome, all.len()).await;

    // Search: not a handle, a session id (refused, not echoed), an unknown handle, a handle.
    type_into(&chrome, "#search-input", "ada").await;
    click(&chrome, "#search-go").await;
    assert_eq!(
        wait_message(&chrome, "\u{201c}ada\u{201d} is not a session handle").await,
        "message error"
    );
    let cookie = ada.cookie.clone().unwrap();
    type_into(&chrome, "#search-input", &cookie).await;
    click(&chrome, "#search-go").await;
    wait_message(&chrome, "That is a session id, not a handle").await;
    type_into(&chrome, "#search-input", &format!("{}A", "A".repeat(42))).await;
    click(&chrome, "#search-go").await;
    wait_message(&chrome, "No live session has the handle").await;
    type_into(&chrome, "#search-input", &grace_id).await;
    click(&chrome, "#search-go").await;
    wait_open(&chrome, &grace_id).await;
    assert_eq!(shown_data(&chrome).await["user"], "grace");

    // Ada's session: pretty JSON, exactly as stored; the page shows its handle, nowhere an id.
    open_row(&chrome, &ada_id).await;
    assert_eq!(
        text_of(&chrome, "#detail-data").await,
        "{\n  \"user\": \"ada\"\n}"
    );
    let html: String = serde_json::from_value(
        chrome
            .client()
            .execute("return document.documentElement.outerHTML", Vec::new())
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(html.contains(&ada_id));
    assert!(!html.contains(&cookie), "the page holds a session id");

    // A patch that is not an object, then one that is not JSON: the API's words, no change.
    type_into(&chrome, "#patch-input", "[1, 2]").await;
    click(&chrome, "#patch-apply").await;
    assert_eq!(
        wait_message(&chrome, "must be a JSON object").await,
        "message error"
    );
    type_into(&chrome, "#patch-input", "{\"role\": ").await;
    click(&chrome, "#patch-apply").await;
    wait_message(&chrome, "not JSON").await;
    assert_eq!(shown_data(&chrome).await, json!({"user": "ada"}));

    // A good patch: the page shows the new data, and the app sees it on ada's next request.
    let patch = r#"{"roles": ["admin"], "cart": [{"sku": "BK-1843", "title": "Notes on the Analytical Engine", "qty": 1}], "locale": "en-GB"}"#;
    let patched = json!({
        "user": "ada",
        "roles": ["admin"],
        "cart": [{"sku": "BK-1843", "title": "Notes on the Analytical Engine", "qty": 1}],
        "locale": "en-GB",
    });
    type_into(&chrome, "#patch-input", patch).await;
    click(&chrome, "#patch-apply").await;
    assert_eq!(wait_message(&chrome, "Patched session").await, "message ok");
    assert_eq!(shown_data(&chrome).await, patched);
    let (status, record) = api_session(&proxy, &ada_id).await;
    assert_eq!(status, 200);
    assert_eq!(record["data"], patched);
    assert_eq!(ada.get("/").await.app_saw().session(), patched);

    // The screenshot: counters, the list, ada's session open.
    let png = client.screenshot().await.unwrap();
    std::fs::create_dir_all(std::path::Path::new(SCREENSHOT).parent().unwrap()).unwrap();
    std::fs::write(SCREENSHOT, &png).unwrap();

    // Delete, through the in-page confirmation: Cancel keeps the session, Confirm removes it.
    open_row(&chrome, &guest_id).await;
    click(&chrome, "#delete-start").await;
    assert!(
        text_of(&chrome, "#delete-confirm")
            .await
            .contains("Really delete?")
    );
    let delete_start = client.find(Locator::Css("#delete-start")).await.unwrap();
    assert!(!delete_start.is_displayed().await.unwrap());
    click(&chrome, "#delete-no").await;
    assert_eq!(api_session(&proxy, &guest_id).await.0, 200);
    click(&chrome, "#delete-start").await;
    click(&chrome, "#delete-yes").await;
    assert_eq!(wait_message(&chrome, "Deleted session").await, "message ok");
    wait_rows(&chrome, all.len() - 1).await;
    assert!(!listed_ids(&chrome).await.contains(&guest_id));
    assert!(is_hidden(&chrome, "#detail").await);
    assert_eq!(api_session(&proxy, &guest_id).await.0, 404);
    let seen = guest.get("/").await.app_saw();
    assert!(seen.is_new(), "the deleted session's user starts fresh");
    assert_eq!(seen.session(), json!({}));

    // The hostile session: every byte shown literally, as text.
    open_row(&chrome, &hostile_id).await;
    let text = text_of(&chrome, "#detail-data").await;
    for part in [
        "<script>alert(1)</script>",
        r#"\"><img src=x onerror=alert(1)>"#,
        r#""<img src=x onerror=\"window.__xss=1\">": "<script>window.__xss=1</script>""#,
        "</pre><script>window.__xss=2</script>",
    ] {
        assert!(
            text.contains(part),
            "{part:?} not shown literally in:\n{text}"
        );
    }
    assert_eq!(
        shown_data(&chrome).await,
        serde_json::from_str::<Value>(HOSTILE).unwrap()
    );
    // Nothing was made from it: no <img>, no script but the page's own, no handler ran, nothing
    // was fetched for `src=x`, and the policy had nothing to block.
    let dom = client
        .execute(
            "return { \
               imgs: document.querySelectorAll('img').length, \
               scripts: [...document.scripts].map(s => s.getAttribute('src')), \
               handlers: document.querySelectorAll('[onerror], [onload], [onclick]').length, \
               xss: window.__xss === undefined ? null : window.__xss, \
               fetched_x: performance.getEntriesByType('resource') \
                 .filter(r => new URL(r.name).pathname === '/x').length, \
               pre_children: document.getElementById('detail-data').children.length, \
               violations: window.__violations, \
             }",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        dom,
        json!({
            "imgs": 0,
            "scripts": ["/admin.js"],
            "handlers": 0,
            "xss": null,
            "fetched_x": 0,
            "pre_children": 0,
            "violations": [],
        })
    );
    // And no dialog ever opened (one left open would also have failed every command since).
    let alert = client.get_alert_text().await;
    assert!(
        alert.as_ref().is_err_and(|e| e.is_no_such_alert()),
        "a dialog fired: {alert:?}"
    );

    // The user column names each session's user; a session without one shows a dash.
    let users = client
        .execute(
            "return Object.fromEntries([...document.querySelectorAll('#session-rows tr')]\
               .map(r => [r.dataset.id, r.querySelector('td.user').textContent]))",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(users[&grace_id], "grace", "{users}");
    assert_eq!(users[&hostile_id], "\u{2013}", "{users}");

    // One user's sessions: ada signs in on a second device, the search by user shows both.
    let (mut phone, phone_id) = session_with(&proxy, r#"{"user":"ada","device":"phone"}"#).await;
    type_into(&chrome, "#user-input", "ada").await;
    click(&chrome, "#user-go").await;
    wait_rows(&chrome, 2).await;
    let listed: BTreeSet<String> = listed_ids(&chrome).await.into_iter().collect();
    assert_eq!(listed, BTreeSet::from([ada_id.clone(), phone_id.clone()]));
    assert!(!is_hidden(&chrome, "#user-bar").await);
    assert_eq!(text_of(&chrome, "#user-name").await, "ada");
    assert_eq!(text_of(&chrome, "#page-info").await, "2 sessions");

    // Sign out everywhere, through the in-page confirmation: Cancel keeps both.
    click(&chrome, "#revoke-start").await;
    assert!(
        text_of(&chrome, "#revoke-confirm")
            .await
            .contains("End every session")
    );
    click(&chrome, "#revoke-no").await;
    assert_eq!(api_session(&proxy, &ada_id).await.0, 200);
    click(&chrome, "#revoke-start").await;
    click(&chrome, "#revoke-yes").await;
    assert_eq!(
        wait_message(&chrome, "Signed ada out everywhere: 2 sessions").await,
        "message ok"
    );
    wait_rows(&chrome, 0).await;
    assert!(!is_hidden(&chrome, "#empty").await);
    assert_eq!(api_session(&proxy, &ada_id).await.0, 404);
    assert_eq!(api_session(&proxy, &phone_id).await.0, 404);
    assert!(ada.get("/").await.app_saw().is_new());
    assert!(phone.get("/").await.app_saw().is_new());

    // Back to every session: ada's two and the deleted guest are gone, the rest are there.
    click(&chrome, "#user-clear").await;
    wait_rows(&chrome, all.len() - 2).await;
    assert!(is_hidden(&chrome, "#user-bar").await);
    let listed: BTreeSet<String> = listed_ids(&chrome).await.into_iter().collect();
    let mut left = all.clone();
    left.remove(&ada_id);
    left.remove(&guest_id);
    // The two browsers' requests above made fresh (empty, unstored) sessions only.
    assert_eq!(listed, left);

    // Forget the token: the form is back, the tab holds no token, a reload asks again.
    click(&chrome, "#forget-token").await;
    chrome
        .wait_for(
            "the token form",
            "return !document.getElementById('auth').hidden",
        )
        .await;
    assert_eq!(
        client
            .execute(
                "return sessionStorage.getItem('session-proxy-admin-token')",
                Vec::new()
            )
            .await
            .unwrap(),
        Value::Null
    );
    client.refresh().await.unwrap();
    chrome
        .wait_for(
            "the token form after a reload",
            "return !document.getElementById('auth').hidden",
        )
        .await;
    assert!(
        client
            .get_alert_text()
            .await
            .is_err_and(|e| e.is_no_such_alert())
    );

    chrome.close().await;
    proxy.stop().await;
}
