//! A test client that behaves like a browser: it keeps cookies, sends a browser's
//! `Accept`, reaches the `*.localhost` hosts through Envoy with the test CA, and follows
//! redirects by hand so tests can see every hop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::cookie::{CookieStore, Jar};
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue, LOCATION};
use reqwest::{Client, RequestBuilder, Response, Url, redirect};

use crate::html;
use crate::lemonldap::Portal;

/// The host names Envoy serves in tests (all resolve to Envoy's listener).
pub const HOSTS: [&str; 6] = [
    "auth.localhost",
    "app.localhost",
    "admin.localhost",
    "cockpit.localhost",
    "apps.localhost",
    "grafana.localhost",
];

/// What a browser sends when navigating.
pub const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

const MAX_REDIRECTS: usize = 20;

/// A cookie-keeping client pointed at one stack's Envoy.
pub struct Browser {
    client: Client,
    jar: Arc<Jar>,
}

impl Browser {
    /// A browser that reaches every test host at Envoy's `envoy_port` and trusts the CA in
    /// the PEM file `ca`.
    pub fn new(envoy_port: u16, ca: &std::path::Path) -> Self {
        let ca_pem = std::fs::read(ca).unwrap_or_else(|e| panic!("read {}: {e}", ca.display()));
        let ca = reqwest::Certificate::from_pem(&ca_pem).expect("test CA is valid PEM");
        Self::build(envoy_port, Some(ca))
    }

    /// A browser for a plain-HTTP Envoy (the bench's).
    pub fn plain(envoy_port: u16) -> Self {
        Self::build(envoy_port, None)
    }

    fn build(envoy_port: u16, ca: Option<reqwest::Certificate>) -> Self {
        let jar = Arc::new(Jar::default());
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(BROWSER_ACCEPT));
        let envoy = SocketAddr::from(([127, 0, 0, 1], envoy_port));
        let mut builder = Client::builder()
            .cookie_provider(jar.clone())
            .redirect(redirect::Policy::none())
            .default_headers(headers)
            .no_proxy()
            .timeout(Duration::from_secs(20));
        if let Some(ca) = ca {
            builder = builder.add_root_certificate(ca);
        }
        for host in HOSTS {
            builder = builder.resolve(host, envoy);
        }
        let client = builder.build().expect("test client builds");
        Self { client, jar }
    }

    /// Another handle on the same client and cookie jar.
    pub fn share(&self) -> Self {
        Self {
            client: self.client.clone(),
            jar: self.jar.clone(),
        }
    }

    /// A GET request (with the browser's default headers); add headers before sending.
    pub fn get(&self, url: &str) -> RequestBuilder {
        self.client.get(url)
    }

    /// A request with any method.
    pub fn request(&self, method: reqwest::Method, url: &str) -> RequestBuilder {
        self.client.request(method, url)
    }

    /// GETs `url` and follows redirects; returns the last response and every `Location`
    /// seen (resolved to absolute URLs), in order.
    pub async fn follow(&self, url: &str) -> (Response, Vec<Url>) {
        let response = send(self.get(url)).await;
        let mut visited = Vec::new();
        let response = self.follow_response(response, &mut visited).await;
        (response, visited)
    }

    /// Follows redirects starting from an already received response, appending each
    /// `Location` to `visited`. Stops (returning the redirect itself) at a Location that
    /// is not one of the test hosts, so nothing ever leaves the machine.
    pub async fn follow_response(&self, response: Response, visited: &mut Vec<Url>) -> Response {
        self.follow_response_until(response, visited, |_| false)
            .await
    }

    /// [`Browser::follow_response`] that also stops (returning the redirect) at the first
    /// `Location` for which `stop` holds, e.g. an IdP whose pages a [`Portal`] walks.
    pub async fn follow_response_until(
        &self,
        mut response: Response,
        visited: &mut Vec<Url>,
        stop: impl Fn(&Url) -> bool,
    ) -> Response {
        for _ in 0..MAX_REDIRECTS {
            let Some(next) = location(&response) else {
                return response;
            };
            visited.push(next.clone());
            if !is_test_host(&next) || stop(&next) {
                return response;
            }
            response = send(self.get(next.as_str())).await;
        }
        panic!(
            "more than {MAX_REDIRECTS} redirects; visited:\n{}",
            list(visited)
        );
    }

    /// Starts at `start`, follows to the IdP's login form, submits it as `user`, and
    /// follows the redirects to the end. Returns the final response and every Location.
    pub async fn login(&self, start: &str, user: &str, password: &str) -> (Response, Vec<Url>) {
        let (page, mut visited) = self.follow(start).await;
        let (response, more) = self
            .submit_form(page, &[("login", user), ("password", password)])
            .await;
        visited.extend(more);
        (response, visited)
    }

    /// Reads a page, picks the POST form that has all of `fill`'s fields (or the first
    /// POST form when `fill` is empty), fills it in, submits it like a browser clicking the
    /// first submit button, and follows the redirects. Panics with the page if no form fits.
    pub async fn submit_form(&self, page: Response, fill: &[(&str, &str)]) -> (Response, Vec<Url>) {
        self.submit_form_until(page, fill, |_| false).await
    }

    /// [`Browser::submit_form`] that stops following redirects at the first `Location` for
    /// which `stop` holds (see [`Browser::follow_response_until`]).
    pub async fn submit_form_until(
        &self,
        page: Response,
        fill: &[(&str, &str)],
        stop: impl Fn(&Url) -> bool,
    ) -> (Response, Vec<Url>) {
        let page_url = page.url().clone();
        let status = page.status();
        let body = page.text().await.expect("page body is readable");
        let Some(mut form) = html::forms(&body)
            .into_iter()
            .find(|f| f.method == "post" && fill.iter().all(|(name, _)| f.has_field(name)))
        else {
            panic!(
                "no POST form with fields {:?} at {page_url} (status {status}):\n{body}",
                fill.iter().map(|(n, _)| n).collect::<Vec<_>>()
            );
        };
        for (name, value) in fill {
            form.set(name, value);
        }
        let action = match &form.action {
            Some(a) if !a.is_empty() => page_url
                .join(a)
                .unwrap_or_else(|e| panic!("form action {a:?} at {page_url}: {e}")),
            _ => page_url.clone(),
        };
        assert!(
            is_test_host(&action),
            "form at {page_url} posts off the test hosts, to {action}"
        );
        let mut visited = vec![action.clone()];
        let response = send(self.client.post(action).form(&form.fields)).await;
        let response = self
            .follow_response_until(response, &mut visited, stop)
            .await;
        (response, visited)
    }

    /// GETs `url` and follows redirects until the first `Location` for which `stop` holds
    /// (not fetched: it is the last of the Locations returned).
    pub async fn follow_until(
        &self,
        url: &str,
        stop: impl Fn(&Url) -> bool,
    ) -> (Response, Vec<Url>) {
        let response = send(self.get(url)).await;
        let mut visited = Vec::new();
        let response = self
            .follow_response_until(response, &mut visited, stop)
            .await;
        (response, visited)
    }

    /// A LemonLDAP::NG portal walker on this browser's client and cookie jar: the portal's
    /// SSO cookie lives next to ours, as in a browser.
    pub fn portal(&self, issuer: &str) -> Portal {
        Portal::with_client(issuer, self.client.clone())
            .unwrap_or_else(|e| panic!("portal at {issuer}: {e}"))
    }

    /// The value of cookie `name` this browser would send to `url`.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        let url = Url::parse(url).expect("valid URL");
        let header = self.jar.cookies(&url)?;
        let header = header.to_str().expect("cookies are ASCII").to_string();
        header.split("; ").find_map(|pair| {
            let (n, v) = pair.split_once('=')?;
            (n == name).then(|| v.to_string())
        })
    }

    /// Stores a session cookie (no expiry) for `url`'s host, as if the server had set it.
    pub fn set_cookie(&self, url: &str, name: &str, value: &str) {
        let url = Url::parse(url).expect("valid URL");
        self.jar
            .add_cookie_str(&format!("{name}={value}; Path=/; Secure"), &url);
    }

    /// Every cookie value this browser holds for the test hosts on `port`, on the paths our
    /// cookies use: what the log scan of [`crate::Stack`] looks for.
    pub fn all_cookie_values(&self, port: u16) -> Vec<String> {
        let mut values = Vec::new();
        for host in HOSTS {
            for path in ["/", "/.portcullis/sign_out"] {
                let url = Url::parse(&format!("https://{host}:{port}{path}")).expect("valid URL");
                if let Some(header) = self.jar.cookies(&url) {
                    let header = header.to_str().unwrap_or_default();
                    values.extend(
                        header
                            .split("; ")
                            .filter_map(|pair| pair.split_once('='))
                            .map(|(_, v)| v.to_string()),
                    );
                }
            }
        }
        values
    }

    /// The `Cookie` header this browser would send to `url`.
    pub fn cookie_header(&self, url: &str) -> Option<String> {
        let url = Url::parse(url).expect("valid URL");
        self.jar
            .cookies(&url)
            .map(|h| h.to_str().expect("cookies are ASCII").to_string())
    }
}

/// Sends a request, panicking with the URL on transport errors.
pub async fn send(request: RequestBuilder) -> Response {
    let (client, request) = request.build_split();
    let request = request.expect("request builds");
    let desc = format!("{} {}", request.method(), request.url());
    client
        .execute(request)
        .await
        .unwrap_or_else(|e| panic!("{desc}: {e:?}"))
}

/// The absolute target of a redirect response, if it is one.
pub fn location(response: &Response) -> Option<Url> {
    if !response.status().is_redirection() {
        return None;
    }
    let raw = response.headers().get(LOCATION)?.to_str().ok()?;
    Some(
        response
            .url()
            .join(raw)
            .unwrap_or_else(|e| panic!("bad Location {raw:?} from {}: {e}", response.url())),
    )
}

/// Whether the client can (and may) go to `url`: an http(s) URL on a test host or 127.0.0.1.
pub fn is_test_host(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https")
        && url
            .host_str()
            .is_some_and(|h| h == "127.0.0.1" || HOSTS.contains(&h))
}

/// One URL per line, for failure messages.
pub fn list(urls: &[Url]) -> String {
    urls.iter()
        .map(|u| format!("  {u}"))
        .collect::<Vec<_>>()
        .join("\n")
}
