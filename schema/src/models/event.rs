use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::prepared::Prepare;
use crate::schema::{events, webhook_attempts, webhook_endpoints};

/// A state change, as the audit trail keeps it and notifications carry it.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = events)]
pub struct Event {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// `document.uploaded`, `request.sent`, `document.signed`, ... (see `shomei_jobs::events`).
    pub kind: String,
    pub document_id: Option<Uuid>,
    pub request_id: Option<Uuid>,
    /// Who made the change: `api_key:<prefix>`, `signer:<id>`, `worker`.
    pub actor: String,
    pub ip: Option<String>,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl Event {
    /// Inserts the events and returns, for each in order, the enabled webhook endpoints of its
    /// tenant that want its kind, oldest first: one statement whatever their number (a
    /// worker's group records its members' events together), prepared once.
    pub fn insert_all_for_subscribers(
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> QueryResult<Vec<Vec<Uuid>>> {
        use diesel::sql_types::{Array, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};

        #[derive(QueryableByName)]
        struct Subscriber {
            #[diesel(sql_type = SqlUuid)]
            event_id: Uuid,
            #[diesel(sql_type = SqlUuid)]
            endpoint_id: Uuid,
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let subscribers: Vec<Subscriber> = diesel::sql_query(
            "WITH event AS (
                 INSERT INTO events (id, tenant_id, kind, document_id, request_id, actor, ip, data, created_at)
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[],
                                      $6::text[], $7::text[], $8::jsonb[], $9::timestamptz[])
                 RETURNING id, tenant_id, kind)
             SELECT event.id AS event_id, endpoint.id AS endpoint_id
               FROM event JOIN webhook_endpoints endpoint ON endpoint.tenant_id = event.tenant_id
              WHERE endpoint.deleted_at IS NULL AND endpoint.enabled
                AND (endpoint.event_kinds IS NULL OR event.kind = ANY(endpoint.event_kinds))
              ORDER BY endpoint.created_at, endpoint.id",
        )
        .bind::<Array<SqlUuid>, _>(events.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind::<Array<SqlUuid>, _>(events.iter().map(|e| e.tenant_id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind::<Array<Nullable<SqlUuid>>, _>(events.iter().map(|e| e.document_id).collect::<Vec<_>>())
        .bind::<Array<Nullable<SqlUuid>>, _>(events.iter().map(|e| e.request_id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(events.iter().map(|e| e.actor.as_str()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(events.iter().map(|e| e.ip.as_deref()).collect::<Vec<_>>())
        .bind::<Array<Jsonb>, _>(events.iter().map(|e| &e.data).collect::<Vec<_>>())
        .bind::<Array<Timestamptz>, _>(events.iter().map(|e| e.created_at).collect::<Vec<_>>())
        .prepared()
        .load(conn)?;
        let mut endpoints: Vec<Vec<Uuid>> = vec![Vec::new(); events.len()];
        for subscriber in subscribers {
            if let Some(at) = events.iter().position(|e| e.id == subscriber.event_id) {
                endpoints[at].push(subscriber.endpoint_id);
            }
        }
        Ok(endpoints)
    }

    pub fn get(conn: &mut PgConnection, id: Uuid) -> QueryResult<Event> {
        events::table
            .find(id)
            .select(Event::as_select())
            .first(conn)
    }

    /// Up to `limit` of the tenant's events in `[from, to)`, in time order, after `after`
    /// (keyset on time and id, so a log of any length is read one page at a time).
    pub fn page(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> QueryResult<Vec<Event>> {
        let mut query = events::table
            .filter(events::tenant_id.eq(tenant_id))
            .filter(events::created_at.ge(from))
            .filter(events::created_at.lt(to))
            .into_boxed();
        if let Some((time, id)) = after {
            query = query.filter(
                events::created_at
                    .gt(time)
                    .or(events::created_at.eq(time).and(events::id.gt(id))),
            );
        }
        query
            .order((events::created_at.asc(), events::id.asc()))
            .limit(limit)
            .select(Event::as_select())
            .load(conn)
    }

    /// How many events of each of `kinds` the tenant had in `[from, to)`; kinds without any
    /// are left out.
    pub fn count_by_kind(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        kinds: &[&str],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> QueryResult<Vec<(String, i64)>> {
        events::table
            .filter(events::tenant_id.eq(tenant_id))
            .filter(events::created_at.ge(from))
            .filter(events::created_at.lt(to))
            .filter(events::kind.eq_any(kinds))
            .group_by(events::kind)
            .select((events::kind, diesel::dsl::count_star()))
            .load(conn)
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = webhook_endpoints)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub url: String,
    pub description: Option<String>,
    /// `whsec_...`; shown to the tenant once, when the endpoint is made.
    pub secret: String,
    /// The event kinds sent here; `None`: all.
    pub event_kinds: Option<Vec<String>>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl WebhookEndpoint {
    pub fn insert(&self, conn: &mut PgConnection) -> QueryResult<()> {
        diesel::insert_into(webhook_endpoints::table)
            .values(self)
            .execute(conn)
            .map(|_| ())
    }

    /// The tenant's endpoints that are not deleted, oldest first.
    pub fn list(conn: &mut PgConnection, tenant_id: Uuid) -> QueryResult<Vec<WebhookEndpoint>> {
        webhook_endpoints::table
            .filter(webhook_endpoints::tenant_id.eq(tenant_id))
            .filter(webhook_endpoints::deleted_at.is_null())
            .order(webhook_endpoints::created_at.asc())
            .select(WebhookEndpoint::as_select())
            .load(conn)
    }

    pub fn find(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        id: Uuid,
    ) -> QueryResult<Option<WebhookEndpoint>> {
        webhook_endpoints::table
            .filter(webhook_endpoints::id.eq(id))
            .filter(webhook_endpoints::tenant_id.eq(tenant_id))
            .filter(webhook_endpoints::deleted_at.is_null())
            .select(WebhookEndpoint::as_select())
            .first(conn)
            .optional()
    }

    /// The endpoint even when deleted (a delivery job must learn that it was).
    pub fn get(conn: &mut PgConnection, id: Uuid) -> QueryResult<WebhookEndpoint> {
        webhook_endpoints::table
            .find(id)
            .select(WebhookEndpoint::as_select())
            .first(conn)
    }

    pub fn delete(conn: &mut PgConnection, tenant_id: Uuid, id: Uuid) -> QueryResult<bool> {
        diesel::update(
            webhook_endpoints::table
                .filter(webhook_endpoints::id.eq(id))
                .filter(webhook_endpoints::tenant_id.eq(tenant_id))
                .filter(webhook_endpoints::deleted_at.is_null()),
        )
        .set(webhook_endpoints::deleted_at.eq(diesel::dsl::now))
        .execute(conn)
        .map(|n| n > 0)
    }

    /// Turns deliveries to the endpoint on again, or off with a reason.
    pub fn set_enabled(
        conn: &mut PgConnection,
        id: Uuid,
        enabled: bool,
        reason: Option<&str>,
    ) -> QueryResult<()> {
        diesel::update(webhook_endpoints::table.find(id))
            .set((
                webhook_endpoints::enabled.eq(enabled),
                webhook_endpoints::disabled_reason.eq(reason),
            ))
            .execute(conn)
            .map(|_| ())
    }
}

/// One HTTP attempt to deliver an event to an endpoint: the delivery log.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = webhook_attempts)]
pub struct WebhookAttempt {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub job_id: Uuid,
    pub attempt: i32,
    /// `delivered`, `failed`, `retry_after`, `gone` or `refused`.
    pub outcome: String,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    pub duration_ms: i32,
    pub created_at: DateTime<Utc>,
}

impl WebhookAttempt {
    pub fn insert(&self, conn: &mut PgConnection) -> QueryResult<()> {
        diesel::insert_into(webhook_attempts::table)
            .values(self)
            .execute(conn)
            .map(|_| ())
    }

    /// The newest attempts to one endpoint.
    pub fn list(
        conn: &mut PgConnection,
        endpoint_id: Uuid,
        limit: i64,
    ) -> QueryResult<Vec<WebhookAttempt>> {
        webhook_attempts::table
            .filter(webhook_attempts::endpoint_id.eq(endpoint_id))
            .order((
                webhook_attempts::created_at.desc(),
                webhook_attempts::id.desc(),
            ))
            .limit(limit)
            .select(WebhookAttempt::as_select())
            .load(conn)
    }

    pub fn find(
        conn: &mut PgConnection,
        endpoint_id: Uuid,
        id: Uuid,
    ) -> QueryResult<Option<WebhookAttempt>> {
        webhook_attempts::table
            .filter(webhook_attempts::id.eq(id))
            .filter(webhook_attempts::endpoint_id.eq(endpoint_id))
            .select(WebhookAttempt::as_select())
            .first(conn)
            .optional()
    }
}
