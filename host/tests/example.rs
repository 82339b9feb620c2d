//! examples/hello-plugin loads and behaves as its documentation says.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ENTITIES, Setup, guests, request};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_plugin_works_as_documented() {
    let s = Setup::new(&[(guests::HELLO_EXAMPLE, "hello.wasm")]);
    let m = s.manager(ENTITIES).await;
    let r = m.execute(&request("c1", "hello", json!({}), 5)).await;
    let e = r.error.unwrap();
    assert!(e.contains("[plugins.hello.grants.docker]"), "{e}");

    let granted = format!("{ENTITIES}\n[plugins.hello.grants.docker]\nprojects = [\"marvin\"]\n");
    let m = s.manager(&granted).await;
    let r = m.execute(&request("c1", "hello", json!({}), 5)).await;
    let e = r.error.unwrap();
    assert!(e.starts_with("unavailable"), "{e}");
    let r = m.execute(&request("w1", "hello", json!({}), 5)).await;
    assert!(
        r.error
            .unwrap()
            .starts_with("action 'hello' is not supported for workers")
    );
}
