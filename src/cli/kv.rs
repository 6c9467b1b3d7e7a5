//! `vigil switch` and `vigil setting`: the audited key-value verbs, their
//! arguments and their handlers.

use super::{ListArgs, StoreArg, WhoArg};
use crate::engine::switches;
use anyhow::{Result, bail};
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum SwitchCmd {
    /// Every known switch: current value in the store, default, what turning it off disables.
    List(ListArgs),
    /// Set a switch on or off, with a reason for the audit trail.
    Set {
        #[command(flatten)]
        store: StoreArg,
        /// Switch name, e.g. authority.db_fallback.
        name: String,
        /// on or off.
        value: String,
        /// Why: recorded in the audit row.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        who: WhoArg,
    },
    /// The audit trail of one switch, oldest first.
    Audit {
        #[command(flatten)]
        store: StoreArg,
        name: String,
        /// One JSON document instead of text (times as Unix ms).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SettingCmd {
    /// Every known setting: its value in the store (or default), bounds, what it governs.
    List(ListArgs),
    /// Set a setting, with a reason for the audit trail; every pod sharing the store uses it.
    Set {
        #[command(flatten)]
        store: StoreArg,
        /// Setting name, e.g. runs.max_deadline_ms.
        name: String,
        /// The new value (an integer within the setting's bounds).
        value: i64,
        /// Why: recorded in the audit row.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        who: WhoArg,
    },
    /// The audit trail of one setting, oldest first.
    Audit {
        #[command(flatten)]
        store: StoreArg,
        name: String,
        /// One JSON document instead of text (times as Unix ms).
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn switch(cmd: SwitchCmd) -> Result<ExitCode> {
    match cmd {
        SwitchCmd::List(ListArgs { store: s, json }) => {
            let views = match s.client()? {
                Some(client) => client.switches().await?.switches,
                None => {
                    let rows = s.open().await?.switches().await?;
                    switches::KNOWN
                        .iter()
                        .map(|spec| {
                            let row = rows.iter().find(|r| r.name == spec.name);
                            crate::pod::wire::SwitchView::of(spec, row, spec.default)
                        })
                        .collect()
                }
            };
            if json {
                let list = crate::pod::wire::SwitchList { switches: views };
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            let now = crate::human::now_ms();
            for v in views {
                let source = match (&v.updated_by, &v.reason, v.updated_at_ms) {
                    (Some(by), Some(why), Some(at)) => {
                        format!("set by {by} {} ({why})", crate::human::age(now, at))
                    }
                    _ => "default".to_owned(),
                };
                println!(
                    "{:<24} {:<3}  {source}\n    off disables: {}\n    metric: {}",
                    v.name,
                    if v.enabled { "on" } else { "off" },
                    v.disables,
                    v.metric
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SwitchCmd::Set {
            store: s,
            name,
            value,
            reason,
            who,
        } => {
            let who = who.resolve();
            let Some(enabled) = switches::parse_bool(&value) else {
                bail!("switch value {value:?}: expected on or off");
            };
            if reason.trim().is_empty() {
                bail!("--reason must say why (it goes into the audit trail)");
            }
            let audit = match s.client()? {
                Some(client) => {
                    let req = crate::pod::wire::SetSwitchRequest {
                        enabled,
                        reason: reason.clone(),
                        who: Some(who.clone()),
                    };
                    client.set_switch(&name, &req).await?
                }
                None => {
                    let store = s.open().await?;
                    switches::set(store.as_ref(), &name, enabled, &who, &reason).await?
                }
            };
            println!(
                "{name}: {} -> {} (by {who}: {reason})",
                switch_word(audit.old),
                switch_word(Some(audit.new))
            );
            Ok(ExitCode::SUCCESS)
        }
        SwitchCmd::Audit {
            store: s,
            name,
            json,
        } => {
            switches::spec(&name)?;
            if s.pod.is_some() {
                bail!("the audit trail is read from the store: pass --store, not --pod");
            }
            let store = s.open().await?;
            let audit = store.switch_audit(&name).await?;
            if json {
                let doc = serde_json::json!({ "name": name, "audit": audit });
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(ExitCode::SUCCESS);
            }
            let now = crate::human::now_ms();
            for a in audit {
                println!(
                    "{}  {} -> {}  by {}: {}",
                    crate::human::when(now, a.at_ms),
                    switch_word(a.old),
                    switch_word(Some(a.new)),
                    a.who,
                    a.reason
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A switch's value as operators type it; `None`: no row, the default.
fn switch_word(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "default",
    }
}

pub(super) async fn setting(cmd: SettingCmd) -> Result<ExitCode> {
    use crate::engine::settings;
    let (SettingCmd::List(ListArgs { store: s, .. })
    | SettingCmd::Set { store: s, .. }
    | SettingCmd::Audit { store: s, .. }) = &cmd;
    if s.pod.is_some() {
        bail!("settings are read and set in the store: pass --store, not --pod");
    }
    let store = s.open().await?;
    match cmd {
        SettingCmd::List(ListArgs { json, .. }) => {
            let rows = store.settings().await?;
            let now = crate::human::now_ms();
            let mut list = Vec::new();
            for spec in settings::KNOWN {
                let row = rows.iter().find(|r| r.name == spec.name);
                if json {
                    list.push(serde_json::json!({
                        "name": spec.name,
                        "value": row.map_or(spec.default, |r| r.value),
                        "default": spec.default,
                        "min": spec.min,
                        "max": spec.max,
                        "source": if row.is_some() { "store" } else { "default" },
                        "governs": spec.governs,
                        "updated_by": row.map(|r| &r.updated_by),
                        "reason": row.map(|r| &r.reason),
                        "updated_at_ms": row.map(|r| r.updated_at_ms),
                    }));
                    continue;
                }
                let (value, source) = match row {
                    Some(r) => (
                        r.value,
                        format!(
                            "set by {} {} ({})",
                            r.updated_by,
                            crate::human::age(now, r.updated_at_ms),
                            r.reason
                        ),
                    ),
                    None => (spec.default, "default".to_string()),
                };
                println!(
                    "{:<24} {value}  {source}\n    {}\n    default {}, from {} to {}",
                    spec.name, spec.governs, spec.default, spec.min, spec.max
                );
            }
            if json {
                let doc = serde_json::json!({ "settings": list });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
        }
        SettingCmd::Set {
            name,
            value,
            reason,
            who,
            ..
        } => {
            let who = who.resolve();
            if reason.trim().is_empty() {
                bail!("--reason must say why (it goes into the audit trail)");
            }
            let audit = settings::set(store.as_ref(), &name, value, &who, &reason).await?;
            let old = audit
                .old
                .map_or_else(|| "default".to_string(), |v| v.to_string());
            println!("{name}: {old} -> {} (by {who}: {reason})", audit.new);
        }
        SettingCmd::Audit { name, json, .. } => {
            settings::spec(&name)?;
            let audit = store.setting_audit(&name).await?;
            if json {
                let doc = serde_json::json!({ "name": name, "audit": audit });
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(ExitCode::SUCCESS);
            }
            let now = crate::human::now_ms();
            for a in audit {
                println!(
                    "{}  {} -> {}  by {}: {}",
                    crate::human::when(now, a.at_ms),
                    a.old
                        .map_or_else(|| "default".to_owned(), |v| v.to_string()),
                    a.new,
                    a.who,
                    a.reason
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
