//! User groups: which folders a principal (an API key, or a person who logs in) may see.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::{api_keys, group_folders, group_members, groups, users};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = groups)]
pub struct Group {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A group with its folders and members.
#[derive(Debug, Clone)]
pub struct GroupDetail {
    pub group: Group,
    pub folders: Vec<String>,
    pub members: Vec<Uuid>,
}

impl Group {
    /// Creates a group over `folders` (normalised by the caller). `None` when the tenant has a
    /// group of that name.
    pub fn create(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        name: &str,
        folders: &[String],
    ) -> QueryResult<Option<GroupDetail>> {
        conn.transaction(|conn| {
            let group: Option<Group> = diesel::insert_into(groups::table)
                .values((
                    groups::id.eq(Uuid::now_v7()),
                    groups::tenant_id.eq(tenant_id),
                    groups::name.eq(name),
                ))
                .on_conflict_do_nothing()
                .returning(Group::as_returning())
                .get_result(conn)
                .optional()?;
            let Some(group) = group else {
                return Ok(None);
            };
            let rows: Vec<_> = folders
                .iter()
                .map(|f| {
                    (
                        group_folders::group_id.eq(group.id),
                        group_folders::folder.eq(f),
                    )
                })
                .collect();
            diesel::insert_into(group_folders::table)
                .values(&rows)
                .on_conflict_do_nothing()
                .execute(conn)?;
            Ok(Some(GroupDetail {
                group,
                folders: folders.to_vec(),
                members: Vec::new(),
            }))
        })
    }

    /// The tenant's groups, by name, with their folders and members.
    pub fn list(conn: &mut PgConnection, tenant_id: Uuid) -> QueryResult<Vec<GroupDetail>> {
        let found: Vec<Group> = groups::table
            .filter(groups::tenant_id.eq(tenant_id))
            .order(groups::name.asc())
            .select(Group::as_select())
            .load(conn)?;
        let ids: Vec<Uuid> = found.iter().map(|g| g.id).collect();
        let folders: Vec<(Uuid, String)> = group_folders::table
            .filter(group_folders::group_id.eq_any(&ids))
            .order(group_folders::folder.asc())
            .load(conn)?;
        let members: Vec<(Uuid, Uuid)> = group_members::table
            .filter(group_members::group_id.eq_any(&ids))
            .order(group_members::principal_id.asc())
            .load(conn)?;
        Ok(found
            .into_iter()
            .map(|group| GroupDetail {
                folders: folders
                    .iter()
                    .filter(|(g, _)| *g == group.id)
                    .map(|(_, f)| f.clone())
                    .collect(),
                members: members
                    .iter()
                    .filter(|(g, _)| *g == group.id)
                    .map(|(_, m)| *m)
                    .collect(),
                group,
            })
            .collect())
    }

    /// Adds an API key or a user of the same tenant to the group. `false` when the group or the key is
    /// not the tenant's.
    pub fn add_member(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        group_id: Uuid,
        principal_id: Uuid,
    ) -> QueryResult<bool> {
        let group_is_theirs = groups::table
            .filter(groups::id.eq(group_id))
            .filter(groups::tenant_id.eq(tenant_id))
            .count()
            .get_result::<i64>(conn)?
            == 1;
        let key_is_theirs = api_keys::table
            .filter(api_keys::id.eq(principal_id))
            .filter(api_keys::tenant_id.eq(tenant_id))
            .count()
            .get_result::<i64>(conn)?
            == 1;
        let user_is_theirs = users::table
            .filter(users::id.eq(principal_id))
            .filter(users::tenant_id.eq(tenant_id))
            .count()
            .get_result::<i64>(conn)?
            == 1;
        if !(group_is_theirs && (key_is_theirs || user_is_theirs)) {
            return Ok(false);
        }
        diesel::insert_into(group_members::table)
            .values((
                group_members::group_id.eq(group_id),
                group_members::principal_id.eq(principal_id),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        Ok(true)
    }

    /// Removes a member; `false` when the group is not the tenant's or had no such member.
    pub fn remove_member(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        group_id: Uuid,
        principal_id: Uuid,
    ) -> QueryResult<bool> {
        let theirs = groups::table
            .filter(groups::id.eq(group_id))
            .filter(groups::tenant_id.eq(tenant_id))
            .select(groups::id);
        diesel::delete(
            group_members::table
                .filter(group_members::group_id.eq_any(theirs))
                .filter(group_members::group_id.eq(group_id))
                .filter(group_members::principal_id.eq(principal_id)),
        )
        .execute(conn)
        .map(|n| n == 1)
    }
}
