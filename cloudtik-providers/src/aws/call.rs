//! The one way the AWS code calls AWS: every EC2, IAM and S3 call of the node provider,
//! the workspace provider and the cluster bootstrap goes through [`Calls`], which
//!
//! * waits for a token of the client-side rate limit (EC2 calls; see [`RateLimiter`]),
//!   and empties the call's bucket when EC2 throttled it;
//! * retries rate limits and transient failures with the jittered backoff of
//!   [`RetryPolicy`] (only rate limits for calls that create something, see
//!   [`Retried`]);
//! * maps the SDK's error to a [`cloudtik_core::Error`] naming the service, the call
//!   and the provider operation (and the workspace, for the workspace provider);
//! * reads all pages of a listing ([`Calls::pages`]), and lists EC2 resources by
//!   filters ([`Calls::list`]) or by an exact tag ([`Calls::tagged`], the resources of
//!   a workspace or cluster).

use std::future::Future;
use std::sync::Arc;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Address, Filter, Instance, InternetGateway, NatGateway, RouteTable, SecurityGroup, Subnet, Tag, Vpc,
    VpcEndpoint, VpcPeeringConnection,
};
use cloudtik_core::{Error, ErrorKind, Result};

use super::errors::{RetryPolicy, classify_service_error, is_rate_limited, is_retried};
use super::rate_limit::{RateLimiter, RateLimits};

/// The AWS service a call goes to: names it in errors, and picks the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    /// EC2: metered by the client-side rate limit.
    Ec2,
    /// IAM (global; its own quotas, not metered here).
    Iam,
    /// S3 (its own per-prefix quotas, not metered here).
    S3,
}

impl Service {
    fn as_str(self) -> &'static str {
        match self {
            Service::Ec2 => "EC2",
            Service::Iam => "IAM",
            Service::S3 => "S3",
        }
    }
}

/// Which failures of a call are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retried {
    /// Rate limits and transient failures (reads, and changes in place).
    Temporary,
    /// Rate limits only: the call creates something, and a transient failure may have
    /// lost the answer of a call that did create it (the caller looks again instead).
    RateLimits,
}

/// One AWS call: its service, the provider operation it serves, its API name, and
/// what is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Call {
    service: Service,
    operation: &'static str,
    name: &'static str,
    retried: Retried,
}

impl Call {
    /// The EC2 call `name` of `operation`, retrying temporary failures.
    pub(crate) fn ec2(operation: &'static str, name: &'static str) -> Self {
        Call {
            service: Service::Ec2,
            operation,
            name,
            retried: Retried::Temporary,
        }
    }

    /// The IAM call `name` of `operation`, retrying temporary failures.
    pub(crate) fn iam(operation: &'static str, name: &'static str) -> Self {
        Call {
            service: Service::Iam,
            ..Call::ec2(operation, name)
        }
    }

    /// The S3 call `name` of `operation`, retrying temporary failures.
    pub(crate) fn s3(operation: &'static str, name: &'static str) -> Self {
        Call {
            service: Service::S3,
            ..Call::ec2(operation, name)
        }
    }

    /// The same call, retried only on rate limits (it creates something).
    #[must_use]
    pub(crate) fn creating(self) -> Self {
        Call {
            retried: Retried::RateLimits,
            ..self
        }
    }
}

/// The future of one SDK request: its answer, or the SDK's error.
pub(crate) trait SdkFuture<T>:
    Future<Output = std::result::Result<T, SdkError<Self::Error, HttpResponse>>>
{
    /// The operation's error type.
    type Error: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static;
}

impl<T, E, F> SdkFuture<T> for F
where
    F: Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    type Error = E;
}

/// The call layer of one provider: its EC2 client, retry policy and rate limit (shared
/// by clones), the page size of `DescribeInstances`, and a context entry every error
/// gets (`workspace=<name>` for the workspace provider).
#[derive(Debug, Clone)]
pub(crate) struct Calls {
    ec2: Client,
    retry: RetryPolicy,
    limiter: Arc<RateLimiter>,
    page_size: Option<i32>,
    scope: Option<(&'static str, String)>,
}

impl Calls {
    /// Calls on `ec2` with `retry` and a new rate limiter of `limits`.
    pub(crate) fn new(ec2: Client, retry: RetryPolicy, limits: RateLimits) -> Self {
        Calls {
            ec2,
            retry,
            limiter: Arc::new(RateLimiter::new(limits)),
            page_size: None,
            scope: None,
        }
    }

    /// Sets the page size of [`list`](Self::list) for the resources that take one.
    #[must_use]
    pub(crate) fn with_page_size(mut self, size: i32) -> Self {
        self.page_size = Some(size);
        self
    }

    /// Adds `key` = `value` to the context of every error.
    #[must_use]
    pub(crate) fn with_scope(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.scope = Some((key, value.into()));
        self
    }

    /// The EC2 client.
    pub(crate) fn ec2(&self) -> &Client {
        &self.ec2
    }

    /// Runs `call`: `send` makes and sends its request (again for each try), after a
    /// token of the rate limit; failures are retried as the call says, and the error
    /// names the service, the call and the operation.
    pub(crate) async fn run<T, F, Fut>(&self, call: Call, mut send: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: SdkFuture<T>,
    {
        let retried = match call.retried {
            Retried::Temporary => is_retried,
            Retried::RateLimits => is_rate_limited,
        };
        self.retry
            .run_when(
                || {
                    let request = send();
                    async move {
                        if call.service == Service::Ec2 {
                            self.limiter.acquire(call.name).await;
                        }
                        request.await.map_err(|e| self.classify(call, e))
                    }
                },
                retried,
            )
            .await
            .map_err(|e| match &self.scope {
                Some((key, value)) => e.with_context(key, value),
                None => e,
            })
    }

    /// Runs a deletion like [`run`](Self::run): a resource that is gone already
    /// ([`ErrorKind::NotFound`]) is success.
    pub(crate) async fn delete<T, F, Fut>(&self, call: Call, send: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: SdkFuture<T>,
    {
        match self.run(call, send).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The SDK error of `call` as an [`Error`]; a throttled EC2 call empties its bucket.
    fn classify<E>(&self, call: Call, e: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let e = classify_service_error(e, call.service.as_str(), call.operation, call.name);
        if call.service == Service::Ec2 && e.kind() == ErrorKind::RateLimited {
            self.limiter.throttled(call.name);
        }
        e
    }

    /// Runs a paginated `call` until its last page: `send(token)` sends the request of
    /// the page after `token` (`None`: the first), and `next` reads a page's next token
    /// (none or empty: the last page). Each page is one [`run`](Self::run).
    pub(crate) async fn pages<P, F, Fut>(
        &self,
        call: Call,
        mut send: F,
        next: impl Fn(&P) -> Option<&str>,
    ) -> Result<Vec<P>>
    where
        F: FnMut(Option<String>) -> Fut,
        Fut: SdkFuture<P>,
    {
        let mut pages = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.run(call, || send(token.clone())).await?;
            token = next(&page).filter(|t| !t.is_empty()).map(str::to_string);
            pages.push(page);
            if token.is_none() {
                return Ok(pages);
            }
        }
    }

    /// Every `T` EC2 lists for `filters`, all pages.
    pub(crate) async fn list<T: Listed>(
        &self,
        operation: &'static str,
        filters: Vec<Filter>,
    ) -> Result<Vec<T>> {
        let page_size = if T::PAGE_SIZE { self.page_size } else { None };
        let pages = self
            .pages(
                Call::ec2(operation, T::CALL),
                |token| T::send(&self.ec2, filters.clone(), page_size, token),
                T::next_token,
            )
            .await?;
        Ok(pages.into_iter().flat_map(T::items).collect())
    }

    /// Every `T` tagged `key` = `value`: listed with that tag filter (and `filters`),
    /// then kept only when the tag is exactly so (EC2 filter values are patterns, and
    /// moto ignores the tag filters of some calls). The resources of a workspace or a
    /// cluster.
    pub(crate) async fn tagged<T: Listed>(
        &self,
        operation: &'static str,
        (key, value): (&str, &str),
        filters: impl IntoIterator<Item = Filter>,
    ) -> Result<Vec<T>> {
        let all = std::iter::once(filter(format!("tag:{key}"), [value]))
            .chain(filters)
            .collect();
        let mut items = self.list::<T>(operation, all).await?;
        items.retain(|item| tag_value(item.tags(), key) == Some(value));
        Ok(items)
    }
}

/// An EC2 filter.
pub(crate) fn filter<V: Into<String>>(
    name: impl Into<String>,
    values: impl IntoIterator<Item = V>,
) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(Into::into).collect()))
        .build()
}

/// The value of the tag `key`.
pub(crate) fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// An EC2 resource that a `Describe*` call lists by filters, page by page.
pub(crate) trait Listed: Sized + Send {
    /// The API name of the call.
    const CALL: &'static str;
    /// Whether the provider's page size applies (`DescribeInstances`; the others are
    /// listed with EC2's default page size).
    const PAGE_SIZE: bool;
    /// One answer of the call.
    type Page: Send;
    /// The call's error.
    type Error: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static;

    /// Sends the request of the page after `token`.
    fn send(
        client: &Client,
        filters: Vec<Filter>,
        page_size: Option<i32>,
        token: Option<String>,
    ) -> impl Future<Output = std::result::Result<Self::Page, SdkError<Self::Error, HttpResponse>>> + Send;

    /// The token of the next page.
    fn next_token(page: &Self::Page) -> Option<&str>;

    /// The resources of a page.
    fn items(page: Self::Page) -> Vec<Self>;

    /// The resource's tags.
    fn tags(&self) -> &[Tag];
}

/// Implements [`Listed`] for `$item`, listed by the client method `$module` (also the
/// SDK's module of the operation) with the filter setter `$filters`; `paged` calls take a next token and
/// a page size, `unpaged` ones answer everything at once.
macro_rules! listed {
    ($item:ty, $call:literal, $module:ident, $output:ident, $error:ident, $filters:ident,
     paged, page_size: $page_size:literal, items: $items:expr) => {
        impl Listed for $item {
            const CALL: &'static str = $call;
            const PAGE_SIZE: bool = $page_size;
            type Page = aws_sdk_ec2::operation::$module::$output;
            type Error = aws_sdk_ec2::operation::$module::$error;

            fn send(
                client: &Client,
                filters: Vec<Filter>,
                page_size: Option<i32>,
                token: Option<String>,
            ) -> impl Future<Output = std::result::Result<Self::Page, SdkError<Self::Error, HttpResponse>>> + Send
            {
                client
                    .$module()
                    .$filters(Some(filters))
                    .set_max_results(page_size)
                    .set_next_token(token)
                    .send()
            }

            fn next_token(page: &Self::Page) -> Option<&str> {
                page.next_token()
            }

            fn items(page: Self::Page) -> Vec<Self> {
                ($items)(page)
            }

            fn tags(&self) -> &[Tag] {
                <$item>::tags(self)
            }
        }
    };
    ($item:ty, $call:literal, $module:ident, $output:ident, $error:ident, $filters:ident,
     unpaged, items: $items:expr) => {
        impl Listed for $item {
            const CALL: &'static str = $call;
            const PAGE_SIZE: bool = false;
            type Page = aws_sdk_ec2::operation::$module::$output;
            type Error = aws_sdk_ec2::operation::$module::$error;

            fn send(
                client: &Client,
                filters: Vec<Filter>,
                _page_size: Option<i32>,
                _token: Option<String>,
            ) -> impl Future<Output = std::result::Result<Self::Page, SdkError<Self::Error, HttpResponse>>> + Send
            {
                client.$module().$filters(Some(filters)).send()
            }

            fn next_token(_page: &Self::Page) -> Option<&str> {
                None
            }

            fn items(page: Self::Page) -> Vec<Self> {
                ($items)(page)
            }

            fn tags(&self) -> &[Tag] {
                <$item>::tags(self)
            }
        }
    };
}

listed!(Instance, "DescribeInstances", describe_instances, DescribeInstancesOutput, DescribeInstancesError,
    set_filters, paged, page_size: true,
    items: |p: Self::Page| p.reservations.unwrap_or_default().into_iter().flat_map(|r| r.instances.unwrap_or_default()).collect());
listed!(Vpc, "DescribeVpcs", describe_vpcs, DescribeVpcsOutput, DescribeVpcsError,
    set_filters, paged, page_size: false,
    items: |p: Self::Page| p.vpcs.unwrap_or_default());
listed!(Subnet, "DescribeSubnets", describe_subnets, DescribeSubnetsOutput, DescribeSubnetsError,
    set_filters, paged, page_size: false,
    items: |p: Self::Page| p.subnets.unwrap_or_default());
listed!(InternetGateway, "DescribeInternetGateways", describe_internet_gateways,
    DescribeInternetGatewaysOutput, DescribeInternetGatewaysError,
    set_filters, paged, page_size: false,
    items: |p: Self::Page| p.internet_gateways.unwrap_or_default());
listed!(RouteTable, "DescribeRouteTables", describe_route_tables, DescribeRouteTablesOutput,
    DescribeRouteTablesError, set_filters, paged, page_size: false,
    items: |p: Self::Page| p.route_tables.unwrap_or_default());
listed!(Address, "DescribeAddresses", describe_addresses, DescribeAddressesOutput, DescribeAddressesError,
    set_filters, unpaged,
    items: |p: Self::Page| p.addresses.unwrap_or_default());
listed!(NatGateway, "DescribeNatGateways", describe_nat_gateways, DescribeNatGatewaysOutput,
    DescribeNatGatewaysError, set_filter, paged, page_size: false,
    items: |p: Self::Page| p.nat_gateways.unwrap_or_default());
listed!(VpcEndpoint, "DescribeVpcEndpoints", describe_vpc_endpoints, DescribeVpcEndpointsOutput,
    DescribeVpcEndpointsError, set_filters, paged, page_size: false,
    items: |p: Self::Page| p.vpc_endpoints.unwrap_or_default());
listed!(SecurityGroup, "DescribeSecurityGroups", describe_security_groups, DescribeSecurityGroupsOutput,
    DescribeSecurityGroupsError, set_filters, paged, page_size: false,
    items: |p: Self::Page| p.security_groups.unwrap_or_default());
listed!(VpcPeeringConnection, "DescribeVpcPeeringConnections", describe_vpc_peering_connections,
    DescribeVpcPeeringConnectionsOutput, DescribeVpcPeeringConnectionsError,
    set_filters, paged, page_size: false,
    items: |p: Self::Page| p.vpc_peering_connections.unwrap_or_default());

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use aws_sdk_ec2::error::ErrorMetadata;
    use aws_sdk_ec2::operation::run_instances::RunInstancesError;

    use super::*;

    fn calls() -> Calls {
        let client = Client::from_conf(
            aws_sdk_ec2::Config::builder()
                .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
                .region(aws_sdk_ec2::config::Region::new("us-east-1"))
                .build(),
        );
        let retry = RetryPolicy::default()
            .with_max_retries(3)
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(2));
        Calls::new(client, retry, RateLimits::unlimited()).with_scope("workspace", "ws")
    }

    fn failure(code: &str, status: u16) -> SdkError<RunInstancesError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message("no").build();
        SdkError::service_error(
            RunInstancesError::generic(meta),
            HttpResponse::new(status.try_into().unwrap(), "".into()),
        )
    }

    #[tokio::test]
    async fn pages_are_read_until_a_page_has_no_next_token() {
        let calls = calls();
        let asked: Mutex<Vec<Option<String>>> = Mutex::default();
        let pages = calls
            .pages(
                Call::ec2("list", "DescribeThings"),
                |token: Option<String>| {
                    asked.lock().unwrap().push(token.clone());
                    let page = match token.as_deref() {
                        None => (1, Some("a".to_string())),
                        Some("a") => (2, Some("b".to_string())),
                        // An empty token ends the listing as well as none.
                        _ => (3, Some(String::new())),
                    };
                    std::future::ready(Ok::<_, SdkError<RunInstancesError, HttpResponse>>(page))
                },
                |page: &(u32, Option<String>)| page.1.as_deref(),
            )
            .await
            .unwrap();
        assert_eq!(pages.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(
            *asked.lock().unwrap(),
            [None, Some("a".to_string()), Some("b".to_string())]
        );
    }

    #[tokio::test]
    async fn creates_are_retried_on_rate_limits_only_and_errors_name_the_call_and_scope() {
        let calls = calls();
        let create = Call::ec2("create_workspace", "CreateVpc").creating();
        let tries = Mutex::new(0);
        let answer = calls
            .run(create, || {
                *tries.lock().unwrap() += 1;
                let first = *tries.lock().unwrap() == 1;
                std::future::ready(if first {
                    Err(failure("RequestLimitExceeded", 503))
                } else {
                    Ok(7)
                })
            })
            .await
            .unwrap();
        assert_eq!((answer, *tries.lock().unwrap()), (7, 2));

        let tries = Mutex::new(0);
        let e = calls
            .run(create, || {
                *tries.lock().unwrap() += 1;
                std::future::ready(Err::<(), _>(failure("InternalError", 500)))
            })
            .await
            .unwrap_err();
        assert_eq!(*tries.lock().unwrap(), 1);
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(e.operation(), Some("create_workspace"));
        assert_eq!(e.context_value("call"), Some("CreateVpc"));
        assert_eq!(e.context_value("workspace"), Some("ws"));
        assert!(e.to_string().contains("EC2 CreateVpc failed"), "{e:#}");

        // A read retries transient failures (1 try and 3 retries), then gives up.
        let tries = Mutex::new(0);
        let e = calls
            .run(Call::iam("find", "GetRole"), || {
                *tries.lock().unwrap() += 1;
                std::future::ready(Err::<(), _>(failure("InternalError", 500)))
            })
            .await
            .unwrap_err();
        assert_eq!(*tries.lock().unwrap(), 4);
        assert!(e.to_string().contains("IAM GetRole failed"), "{e:#}");
    }

    #[tokio::test]
    async fn a_deletion_of_something_gone_succeeds() {
        let calls = calls();
        let gone = calls
            .delete(Call::ec2("delete_workspace", "DeleteSubnet"), || {
                std::future::ready(Err::<(), _>(failure("InvalidSubnetID.NotFound", 400)))
            })
            .await;
        assert!(gone.is_ok());
        let refused = calls
            .delete(Call::ec2("delete_workspace", "DeleteSubnet"), || {
                std::future::ready(Err::<(), _>(failure("DependencyViolation", 400)))
            })
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Conflict);
    }
}
