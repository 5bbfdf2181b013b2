//! The saved-graders table, written once for every SQL backend (`$N`
//! placeholders bind by position in both SQLite and Postgres).

/// Implements `GraderStore` for a backend struct with a `pool` field.
#[macro_export]
macro_rules! impl_grader_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::traits::GraderStore for $store {
            async fn insert_grader(
                &self,
                g: &$crate::store::types::GraderRecord,
            ) -> Result<(), $crate::store::error::StoreError> {
                let result = sqlx::query("INSERT INTO graders (name, grader, created_at, project_id) VALUES ($1, $2, $3, $4)")
                    .bind(&g.name)
                    .bind($crate::store::rows::to_json(&g.grader))
                    .bind(g.created_at)
                    .bind(&g.project)
                    .execute(&self.pool)
                    .await;
                $crate::store::rows::unique_as_conflict(result, || g.name.clone()).map(|_| ())
            }

            async fn get_grader(
                &self,
                project: &str,
                name: &str,
            ) -> Result<Option<$crate::store::types::GraderRecord>, $crate::store::error::StoreError> {
                let row = sqlx::query("SELECT project_id, name, grader, created_at FROM graders WHERE project_id = $1 AND name = $2")
                    .bind(project)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::store::rows::grader_from_row).transpose()
            }

            async fn list_graders(
                &self,
                project: &str,
                after_name: Option<&str>,
                limit: usize,
            ) -> Result<Vec<$crate::store::types::GraderRecord>, $crate::store::error::StoreError> {
                let rows =
                    sqlx::query("SELECT project_id, name, grader, created_at FROM graders WHERE project_id = $3 AND name > $1 ORDER BY name LIMIT $2")
                        .bind(after_name.unwrap_or(""))
                        .bind(limit as i64)
                        .bind(project)
                        .fetch_all(&self.pool)
                        .await?;
                rows.iter().map($crate::store::rows::grader_from_row).collect()
            }
        }
    };
}
