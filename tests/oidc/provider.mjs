// A real OpenID provider for the single sign-on tests (tests/test_sso.py): npm's oidc-provider, a
// certified implementation, on a loopback port it chooses itself. It prints one JSON line
// {"issuer": "http://127.0.0.1:PORT"} on standard output once it listens, and serves until it is
// terminated.
//
// Environment: OIDC_CLIENT_ID, OIDC_CLIENT_SECRET (the test client, confidential, PKCE S256 required),
// OIDC_REDIRECT_URIS and OIDC_POST_LOGOUT_REDIRECT_URIS (space-separated).
//
// The login page is our own (not oidc-provider's development interactions) because the ID token's
// `amr` comes from the login result: each account below says which methods its login reports. A
// POST of `login=<account>` to /interaction/<uid> signs that account in; consent is given at once
// (loadExistingGrant), as an institution's provider does for its own applications.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

export const ACCOUNTS = {
  // a password only at the provider
  coordinator: { email: 'coordinator@example.org', email_verified: true, name: 'Coordinator', amr: ['pwd'] },
  // password and a one-time code: two factors
  'coordinator-otp': { email: 'coordinator@example.org', email_verified: true, name: 'Coordinator', amr: ['pwd', 'otp'] },
  // the provider says "multiple factors" without naming them (Entra ID's way)
  'coordinator-mfa': { email: 'coordinator@example.org', email_verified: true, name: 'Coordinator', amr: ['mfa'] },
  // a hardware key without a PIN or biometric: one factor
  'coordinator-hwk': { email: 'coordinator@example.org', email_verified: true, name: 'Coordinator', amr: ['hwk'] },
  // the e-mail in other capitals: the same account
  'coordinator-caps': { email: 'Coordinator@Example.ORG', email_verified: true, name: 'Coordinator', amr: ['pwd'] },
  manager: { email: 'manager@example.org', email_verified: true, name: 'Manager', amr: ['pwd'] },
  therapist: { email: 'therapist@example.org', email_verified: true, name: 'Therapist', amr: ['pwd'] },
  // an account of the system whose address the provider has not verified
  'monitor-unverified': { email: 'monitor@example.org', email_verified: false, name: 'Monitor', amr: ['pwd'] },
  // no email_verified claim at all
  'monitor-unsaid': { email: 'monitor@example.org', name: 'Monitor', amr: ['pwd'] },
  // a verified address with no account in the system
  stranger: { email: 'stranger@example.org', email_verified: true, name: 'Stranger', amr: ['pwd', 'otp'] },
};

const env = (name, fallback) => process.env[name] || fallback;
const list = (name) => env(name, '').split(/\s+/).filter(Boolean);

function signingKeys() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' }] };
}

function configuration() {
  return {
    clients: [{
      client_id: env('OIDC_CLIENT_ID', 'trial-tests'),
      client_secret: env('OIDC_CLIENT_SECRET', 'a-secret-of-the-tests'),
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: list('OIDC_REDIRECT_URIS'),
      post_logout_redirect_uris: list('OIDC_POST_LOGOUT_REDIRECT_URIS'),
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    pkce: { required: () => true },
    // amr in every ID token, as Entra ID, Okta or Keycloak put it (oidc-provider only when asked for)
    claims: {
      acr: null, amr: null, auth_time: null, iss: null, sid: null,
      openid: ['sub', 'amr'], email: ['email', 'email_verified'], profile: ['name'],
    },
    jwks: signingKeys(),
    cookies: { keys: [randomBytes(16).toString('hex')] },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, id) {
      const account = ACCOUNTS[id];
      if (!account) return undefined;
      const { amr, ...claims } = account;
      return { accountId: id, claims: () => ({ sub: id, ...claims }) };
    },
    async loadExistingGrant(ctx) {
      const { client, session } = ctx.oidc;
      const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
      grant.addOIDCScope('openid email profile');
      await grant.save();
      return grant;
    },
  };
}

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, error) {
  const options = Object.keys(ACCOUNTS).map((id) => `<option value="${escape(id)}">${escape(id)}</option>`).join('');
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Test provider: sign in</title></head>
<body><h1>Test provider: sign in</h1>${error ? `<p role="alert">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}"><label for="login">Account</label>
<select id="login" name="login">${options}</select> <button type="submit">Sign in</button></form></body></html>`;
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function interaction(provider, req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  if (details.prompt.name !== 'login') throw new Error(`prompt ${details.prompt.name} is not handled here`);
  if (req.method === 'POST') {
    const login = (await readForm(req)).get('login');
    if (ACCOUNTS[login]) {
      const result = { login: { accountId: login, amr: ACCOUNTS[login].amr, remember: false } };
      await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
      return;
    }
    res.writeHead(400, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(loginPage(uid, 'unknown account'));
    return;
  }
  res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(loginPage(uid));
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, configuration());
  const callback = provider.callback();
  server.on('request', (req, res) => {
    const m = /^\/interaction\/([A-Za-z0-9_-]+)$/.exec(new URL(req.url, issuer).pathname);
    if (!m) {
      callback(req, res);
      return;
    }
    interaction(provider, req, res, m[1]).catch((err) => {
      res.writeHead(400, { 'Content-Type': 'text/plain; charset=utf-8' });
      res.end(`interaction failed: ${err.message}`);
    });
  });
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
