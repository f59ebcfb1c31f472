//! Operator actions: what operators (the CLI) and the system itself (anchors, retention purges)
//! did to the service. One of the three chained logs; rows are only ever inserted here.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use uuid::Uuid;

use crate::schema::operator_actions;

/// `action` of a retention purge; its `detail` is the checkpoint the purged chain restarts
/// from (`through_seq`, `entry_hash`).
pub const ACTION_LOG_PURGE: &str = "log.purge";
/// `action` of an anchor; `detail` names the entry time-stamped (`seq`, `entry_hash`).
pub const ACTION_LOG_ANCHOR: &str = "log.anchor";

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = operator_actions)]
pub struct OperatorAction {
    pub id: Uuid,
    /// `cli:<operator>` or `scheduler`.
    pub actor: String,
    /// `tenant.create`, `key.create`, `log.anchor`, `log.purge`, ...
    pub action: String,
    /// What was acted on: a tenant id, a key id, a log name.
    pub target: String,
    pub detail: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct Seq {
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    seq: Option<i64>,
}

impl OperatorAction {
    /// Records an action; call it in the transaction of the action itself where there is one.
    pub fn record(
        conn: &mut PgConnection,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> QueryResult<OperatorAction> {
        let row = OperatorAction {
            id: Uuid::now_v7(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
            created_at: Utc::now(),
        };
        diesel::insert_into(operator_actions::table)
            .values(&row)
            .execute(conn)?;
        Ok(row)
    }

    /// Every record of `action` on `target` (sealed or not), oldest first by seq.
    pub fn of(
        conn: &mut PgConnection,
        action: &str,
        target: &str,
    ) -> QueryResult<Vec<OperatorAction>> {
        operator_actions::table
            .filter(operator_actions::action.eq(action))
            .filter(operator_actions::target.eq(target))
            .order((
                operator_actions::seq.asc().nulls_last(),
                operator_actions::created_at.asc(),
            ))
            .select(OperatorAction::as_select())
            .load(conn)
    }

    /// Whether any action but `except` was sealed after `seq` (the anchoring of the operator
    /// log skips a head that only its own anchor records moved).
    pub fn any_sealed_after_except(
        conn: &mut PgConnection,
        seq: i64,
        except: &str,
    ) -> QueryResult<bool> {
        diesel::select(diesel::dsl::exists(
            operator_actions::table
                .filter(operator_actions::seq.gt(seq))
                .filter(operator_actions::action.ne(except)),
        ))
        .get_result(conn)
    }

    /// The lowest seq among the newest sealed purge record of each log: the operator log's own
    /// purge must stop before it, or a chain would lose the checkpoint it restarts from.
    pub fn oldest_needed_purge_record(conn: &mut PgConnection) -> QueryResult<Option<i64>> {
        diesel::sql_query(
            "SELECT min(newest) AS seq FROM \
             (SELECT max(seq) AS newest FROM operator_actions \
              WHERE action = $1 AND seq IS NOT NULL GROUP BY target) AS per_log",
        )
        .bind::<Text, _>(ACTION_LOG_PURGE)
        .get_result::<Seq>(conn)
        .map(|s| s.seq)
    }
}
