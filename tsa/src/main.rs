//! `shomei-tsa`: the RFC 3161 time-stamping authority. Reads its settings, opens the HSM,
//! serves until SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use der::asn1::ObjectIdentifier;
use shomei_config::Config;
use shomei_signing::{Hsm, HsmSettings};
use shomei_tsa::TsaState;

fn main() -> anyhow::Result<()> {
    shomei_telemetry::init();
    shomei_telemetry::metrics::init("tsa");
    run(Config::from_env()?)
}

#[tokio::main]
async fn run(config: Config) -> anyhow::Result<()> {
    let settings = config.tsa;
    let policy = ObjectIdentifier::new(settings.policy_oid.trim()).map_err(|e| {
        anyhow::anyhow!(
            "SHOMEI_TSA_POLICY_OID {:?} is not an OID: {e}",
            settings.policy_oid
        )
    })?;
    let hsm_settings = HsmSettings::from_config(&config.hsm);
    let key_label = settings.key_label.clone();
    let state = tokio::task::spawn_blocking(move || {
        let hsm = Hsm::connect(&hsm_settings).context("opening the HSM")?;
        TsaState::new(hsm, &key_label, policy)
    })
    .await??;
    let (listener, addr) = shomei_tsa::bind(settings.listen_addr).await?;
    tracing::info!(%addr, key = %settings.key_label, policy = %policy, "TSA listening");
    shomei_tsa::serve(
        listener,
        Arc::new(state),
        shomei_telemetry::shutdown_signal(),
    )
    .await;
    Ok(())
}
