//! The workspace's managed S3 bucket.

use super::*;

impl AwsWorkspaceProvider {
    /// Runs an S3 call, retrying rate limits and transient failures.
    pub(super) async fn s3_call<T, F, Fut>(&self, op: &'static str, call: &'static str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: SdkFuture<T>,
    {
        self.calls
            .run(Call::s3(op, call), f)
            .await
            .map_err(at(Piece::ManagedStorage, &self.bucket_name()))
    }

    /// The managed bucket: `cloudtik-<workspace>-<region>-default` (as CloudTik).
    pub(super) fn bucket_name(&self) -> String {
        format!("cloudtik-{}-{}-default", self.workspace, self.settings.region)
    }

    /// Whether the managed bucket exists (and is this account's).
    pub(super) async fn bucket_exists(&self, op: &'static str) -> Result<bool> {
        let bucket = self.bucket_name();
        match self
            .s3_call(op, "HeadBucket", || self.s3.head_bucket().bucket(&bucket).send())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Step 11: the managed bucket, tagged with the workspace and encrypted (SSE-S3).
    pub(super) async fn ensure_bucket(&self, op: &'static str, exists: bool) -> Result<()> {
        let bucket = self.bucket_name();
        if !exists {
            let location = (self.settings.region != "us-east-1").then(|| {
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                        self.settings.region.as_str(),
                    ))
                    .build()
            });
            let created = self
                .s3_call(op, "CreateBucket", || {
                    self.s3
                        .create_bucket()
                        .bucket(&bucket)
                        .set_create_bucket_configuration(location.clone())
                        .send()
                })
                .await;
            match created {
                Ok(_) => tracing::info!(workspace = %self.workspace, %bucket, "managed bucket created"),
                Err(e) if ec2_code(&e) == Some("BucketAlreadyOwnedByYou") => {}
                Err(e) => return Err(e),
            }
        }
        let build = |e: aws_sdk_s3::error::BuildError| {
            unexpected(op, &format!("an S3 request could not be built: {e:#}"))
        };
        let tagging = aws_sdk_s3::types::Tagging::builder()
            .tag_set(
                aws_sdk_s3::types::Tag::builder()
                    .key(WORKSPACE_TAG)
                    .value(&self.workspace)
                    .build()
                    .map_err(build)?,
            )
            .build()
            .map_err(build)?;
        self.s3_call(op, "PutBucketTagging", || {
            self.s3
                .put_bucket_tagging()
                .bucket(&bucket)
                .tagging(tagging.clone())
                .send()
        })
        .await?;
        let encryption = aws_sdk_s3::types::ServerSideEncryptionConfiguration::builder()
            .rules(
                aws_sdk_s3::types::ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(
                        aws_sdk_s3::types::ServerSideEncryptionByDefault::builder()
                            .sse_algorithm(aws_sdk_s3::types::ServerSideEncryption::Aes256)
                            .build()
                            .map_err(build)?,
                    )
                    .build(),
            )
            .build()
            .map_err(build)?;
        self.s3_call(op, "PutBucketEncryption", || {
            self.s3
                .put_bucket_encryption()
                .bucket(&bucket)
                .server_side_encryption_configuration(encryption.clone())
                .send()
        })
        .await?;
        Ok(())
    }

    /// Empties and deletes the managed bucket (gone already is success).
    pub(super) async fn delete_bucket(&self, op: &'static str) -> Result<()> {
        let bucket = self.bucket_name();
        let build = |e: aws_sdk_s3::error::BuildError| {
            unexpected(op, &format!("an S3 request could not be built: {e:#}"))
        };
        loop {
            let listed = match self
                .s3_call(op, "ListObjectsV2", || {
                    self.s3.list_objects_v2().bucket(&bucket).send()
                })
                .await
            {
                Ok(l) => l,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            let keys: Vec<aws_sdk_s3::types::ObjectIdentifier> = listed
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .map(|k| {
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key(k)
                        .build()
                        .map_err(build)
                })
                .collect::<Result<_>>()?;
            if keys.is_empty() {
                break;
            }
            let delete = aws_sdk_s3::types::Delete::builder()
                .set_objects(Some(keys))
                .quiet(true)
                .build()
                .map_err(build)?;
            self.s3_call(op, "DeleteObjects", || {
                self.s3
                    .delete_objects()
                    .bucket(&bucket)
                    .delete(delete.clone())
                    .send()
            })
            .await?;
        }
        match self
            .s3_call(op, "DeleteBucket", || {
                self.s3.delete_bucket().bucket(&bucket).send()
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}
