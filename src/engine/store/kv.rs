//! The audited key-value tables: kill switches (`switches`, `switch_audit`;
//! see `crate::engine::switches`) and settings (`settings`,
//! `setting_audit`; see `crate::engine::settings`). Both are a table of
//! current values (`name`, the value, `updated_at`, `updated_by`, `reason`)
//! and an audit log (`name`, `old_value`, `new_value`, `who`, `reason`,
//! `at`): one [`AuditedTable`] each, and one implementation of listing,
//! set-with-audit and reading the audit for both, on both backends
//! ([`impl_audited_kv!`]), on rows decoded here.

use super::{SettingAudit, SettingRow, SwitchAudit, SwitchRow};

/// One audited key-value table and its audit log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuditedTable {
    /// The table of current values, keyed by `name`.
    pub table: &'static str,
    /// Its value column.
    pub value: &'static str,
    /// The audit log.
    pub audit: &'static str,
}

/// The kill switches: a `bool` each.
pub(crate) const SWITCHES: AuditedTable = AuditedTable {
    table: "switches",
    value: "enabled",
    audit: "switch_audit",
};

/// The settings: an `i64` each.
pub(crate) const SETTINGS: AuditedTable = AuditedTable {
    table: "settings",
    value: "value",
    audit: "setting_audit",
};

impl AuditedTable {
    /// Every row, by name, as [`KvRow`].
    pub fn list_sql(&self) -> String {
        format!(
            "SELECT name, {} AS value, updated_at, updated_by, reason FROM {} ORDER BY name",
            self.value, self.table
        )
    }

    /// The current value of `$1`, with `lock` appended (the dialect's row
    /// lock, or nothing).
    pub fn current_sql(&self, lock: &str) -> String {
        format!(
            "SELECT {} FROM {} WHERE name = $1{lock}",
            self.value, self.table
        )
    }

    /// Set `$1` to `$2`, at `$3`, by `$4`, for `$5`.
    pub fn upsert_sql(&self) -> String {
        let (t, v) = (self.table, self.value);
        format!(
            "INSERT INTO {t} (name, {v}, updated_at, updated_by, reason) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE \
             SET {v} = $2, updated_at = $3, updated_by = $4, reason = $5"
        )
    }

    /// The audit row of one change.
    pub fn audit_insert_sql(&self) -> String {
        format!(
            "INSERT INTO {} (name, old_value, new_value, who, reason, at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            self.audit
        )
    }

    /// The changes of `$1`, oldest first, as [`KvAuditRow`].
    pub fn audit_sql(&self) -> String {
        format!(
            "SELECT name, old_value, new_value, who, reason, at FROM {} \
             WHERE name = $1 ORDER BY id",
            self.audit
        )
    }
}

/// A row of current values.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct KvRow<V> {
    name: String,
    value: V,
    updated_at: i64,
    updated_by: String,
    reason: String,
}

/// One audit row; also what a set wrote.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct KvAuditRow<V> {
    pub name: String,
    pub old_value: Option<V>,
    pub new_value: V,
    pub who: String,
    pub reason: String,
    pub at: i64,
}

impl From<KvRow<bool>> for SwitchRow {
    fn from(r: KvRow<bool>) -> SwitchRow {
        SwitchRow {
            name: r.name,
            enabled: r.value,
            updated_at_ms: r.updated_at,
            updated_by: r.updated_by,
            reason: r.reason,
        }
    }
}

impl From<KvRow<i64>> for SettingRow {
    fn from(r: KvRow<i64>) -> SettingRow {
        SettingRow {
            name: r.name,
            value: r.value,
            updated_at_ms: r.updated_at,
            updated_by: r.updated_by,
            reason: r.reason,
        }
    }
}

impl From<KvAuditRow<bool>> for SwitchAudit {
    fn from(r: KvAuditRow<bool>) -> SwitchAudit {
        SwitchAudit {
            name: r.name,
            old: r.old_value,
            new: r.new_value,
            who: r.who,
            reason: r.reason,
            at_ms: r.at,
        }
    }
}

impl From<KvAuditRow<i64>> for SettingAudit {
    fn from(r: KvAuditRow<i64>) -> SettingAudit {
        SettingAudit {
            name: r.name,
            old: r.old_value,
            new: r.new_value,
            who: r.who,
            reason: r.reason,
            at_ms: r.at,
        }
    }
}

/// The audited key-value operations of a backend (its store type, its
/// `sqlx::Database` and its `dialect` module, whose `ROW_LOCK` locks the row
/// a set reads), generic over the value type: inherent `kv_list`, `kv_set`
/// and `kv_audit`, which the store's switch and setting methods call.
macro_rules! impl_audited_kv {
    ($store:ty, $db:ty, $dialect:ident) => {
        impl $store {
            /// Every row of an audited key-value table, by name.
            async fn kv_list<V>(
                &self,
                kv: $crate::engine::store::kv::AuditedTable,
            ) -> $crate::engine::store::StoreResult<Vec<$crate::engine::store::kv::KvRow<V>>>
            where
                V: sqlx::Type<$db> + for<'r> sqlx::Decode<'r, $db> + Send + Unpin,
            {
                Ok(sqlx::query_as(sqlx::AssertSqlSafe(kv.list_sql()))
                    .fetch_all(&self.pool)
                    .await?)
            }

            /// Set `name` in an audited key-value table and write its audit
            /// row (the old value read under the row's lock), in one
            /// transaction. Returns the audit row.
            async fn kv_set<V>(
                &self,
                kv: $crate::engine::store::kv::AuditedTable,
                name: &str,
                value: V,
                who: &str,
                reason: &str,
            ) -> $crate::engine::store::StoreResult<$crate::engine::store::kv::KvAuditRow<V>>
            where
                V: sqlx::Type<$db>
                    + for<'q> sqlx::Encode<'q, $db>
                    + for<'r> sqlx::Decode<'r, $db>
                    + Copy
                    + Send
                    + Sync
                    + Unpin
                    + 'static,
            {
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                let old: Option<V> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(kv.current_sql($dialect::ROW_LOCK)))
                        .bind(name)
                        .fetch_optional(&mut **tx)
                        .await?;
                sqlx::query(sqlx::AssertSqlSafe(kv.upsert_sql()))
                    .bind(name)
                    .bind(value)
                    .bind(now)
                    .bind(who)
                    .bind(reason)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(kv.audit_insert_sql()))
                    .bind(name)
                    .bind(old)
                    .bind(value)
                    .bind(who)
                    .bind(reason)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                tx.commit().await?;
                Ok($crate::engine::store::kv::KvAuditRow {
                    name: name.to_owned(),
                    old_value: old,
                    new_value: value,
                    who: who.to_owned(),
                    reason: reason.to_owned(),
                    at: now,
                })
            }

            /// The audit log of `name` in an audited key-value table, oldest first.
            async fn kv_audit<V>(
                &self,
                kv: $crate::engine::store::kv::AuditedTable,
                name: &str,
            ) -> $crate::engine::store::StoreResult<Vec<$crate::engine::store::kv::KvAuditRow<V>>>
            where
                V: sqlx::Type<$db> + for<'r> sqlx::Decode<'r, $db> + Send + Unpin,
            {
                Ok(sqlx::query_as(sqlx::AssertSqlSafe(kv.audit_sql()))
                    .bind(name)
                    .fetch_all(&self.pool)
                    .await?)
            }
        }
    };
}
pub(crate) use impl_audited_kv;
