//! `wren status`: asks the local agent for its status over the API socket and prints it as a
//! table, like `calicoctl node status`, or as JSON (`-o json`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::HOST;
use hyper_util::rt::TokioIo;

use super::{Output, StatusArgs, print_json};
use crate::daemon::status::AgentStatus;

/// How long `wren status` waits for the agent.
const TIMEOUT: Duration = Duration::from_secs(5);

/// GETs `path` from the agent's local API and returns status code and body.
pub async fn get(socket: &Path, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to the wren agent at {} (is it running?)",
                    socket.display()
                )
            })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(HOST, "wren-agent")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body.to_vec()))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .with_context(|| {
            format!(
                "the wren agent at {} did not answer within {TIMEOUT:?}",
                socket.display()
            )
        })?
}

/// Runs `wren status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let (code, body) = get(&args.socket, "/v1/status").await?;
    if code != 200 {
        anyhow::bail!(
            "the wren agent answered {code}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let status: AgentStatus =
        serde_json::from_slice(&body).context("the wren agent's status does not parse")?;
    match args.output.output {
        Output::Table => print!("{}", status.render()),
        Output::Json => print_json(&status)?,
    }
    Ok(())
}
