// A real OpenID provider (node-oidc-provider) for Portico's single sign-on tests.
//
// It listens on 127.0.0.1 on a free port and prints `listening <issuer>` on stdout. Until the
// test calls `POST /test/setup` with {client_id, client_secret, redirect_uri} every other request
// answers 503. Sign-in is automatic: the account the test chose last (`POST /test/account` with
// {sub, email, email_verified, name}) is signed in, and consent is granted, so a plain HTTP
// client can walk the redirects. The ID token carries only `sub` and protocol claims
// (oidc-provider's default), so the relying party has to read e-mail from userinfo.
import http from 'node:http';
import Provider from 'oidc-provider';

const accounts = new Map();
let current = null;
let provider = null;

function readJson(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => { try { resolve(JSON.parse(body || '{}')); } catch (e) { reject(e); } });
  });
}

function reply(res, status, obj) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(obj));
}

const server = http.createServer(async (req, res) => {
  try {
    if (req.method === 'POST' && req.url === '/test/account') {
      const a = await readJson(req);
      accounts.set(a.sub, a);
      current = a.sub;
      return reply(res, 200, { ok: true });
    }
    if (req.method === 'POST' && req.url === '/test/setup') {
      const c = await readJson(req);
      provider = makeProvider(c);
      return reply(res, 200, { ok: true });
    }
    if (!provider) return reply(res, 503, { error: 'not set up' });
    const m = req.url.match(/^\/interaction\/([^/?]+)/);
    if (req.method === 'GET' && m) {
      const details = await provider.interactionDetails(req, res);
      if (details.prompt.name === 'login') {
        if (!current) return reply(res, 400, { error: 'no account chosen' });
        return provider.interactionFinished(req, res, { login: { accountId: current } }, { mergeWithLastSubmission: false });
      }
      const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      const missing = details.prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      const grantId = await grant.save();
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    return provider.callback()(req, res);
  } catch (e) {
    console.error(e);
    reply(res, 500, { error: String(e) });
  }
});

let issuer = null;

function makeProvider(c) {
  const p = new Provider(issuer, {
    clients: [{
      client_id: c.client_id,
      client_secret: c.client_secret,
      redirect_uris: [c.redirect_uri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    scopes: ['openid', 'email', 'profile'],
    pkce: { required: () => true },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: { devInteractions: { enabled: false } },
    cookies: { keys: ['portico-test-cookie-key'] },
    async findAccount(ctx, sub) {
      const a = accounts.get(sub);
      if (!a) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { sub, email: a.email, email_verified: a.email_verified, name: a.name };
        },
      };
    },
  });
  p.proxy = false;
  return p;
}

server.listen(0, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  console.log(`listening ${issuer}`);
});
