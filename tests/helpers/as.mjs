// A real OAuth 2.0 authorization server for the gateway's tests: node-oidc-provider, with
// opaque access tokens from the client-credentials grant, token introspection (RFC 7662),
// revocation (RFC 7009) and DPoP (RFC 9449).
//
//   node as.mjs      starts on a free loopback port and prints its issuer URL
//
// Clients:
//   gateway / gateway-secret   introspects tokens (client_secret_basic)
//   svc / svc-secret           gets tokens with client_credentials, scopes orders.read orders.write
//   web / web-secret           a web application with back-channel logout (OpenID Connect
//                              Back-Channel Logout 1.0), its sessions required
//
// Test hook: POST /test/backchannel-logout {"uri", "sub", "sid"} has the provider send the
// logout token for that session to `uri`, as ending the session at the provider does
// (`client.backchannelLogout`), and answers with the status it got.
import net from 'node:net';
import Provider from 'oidc-provider';

const port = await new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'gateway',
      client_secret: 'gateway-secret',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'svc',
      client_secret: 'svc-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'orders.read orders.write',
    },
    {
      client_id: 'web',
      client_secret: 'web-secret',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: ['https://app.example/cb'],
      backchannel_logout_uri: 'https://app.example/backchannel-logout',
      backchannel_logout_session_required: true,
    },
  ],
  scopes: ['orders.read', 'orders.write'],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    dPoP: { enabled: true },
    backchannelLogout: { enabled: true },
    devInteractions: { enabled: false },
  },
  ttl: { ClientCredentials: 600 },
  // The provider guards its outgoing requests against loopback addresses; the gateway it
  // calls (back-channel logout) is on loopback in the tests.
  fetch: (url, options) => {
    delete options.dispatcher;
    return fetch(url, options);
  },
});
provider.proxy = false;

provider.use(async (ctx, next) => {
  if (ctx.path !== '/test/backchannel-logout' || ctx.method !== 'POST') return next();
  const chunks = [];
  for await (const chunk of ctx.req) chunks.push(chunk);
  const { uri, sub, sid } = JSON.parse(Buffer.concat(chunks).toString());
  const client = await provider.Client.find('web');
  // The gateway's address is known only once it runs.
  client.backchannelLogoutUri = uri;
  try {
    await client.backchannelLogout(sub, sid);
    ctx.body = { status: 200 };
  } catch (e) {
    ctx.body = { status: e.response ? e.response.status : 0, error: `${e.message}: ${e.cause}` };
  }
});

provider.listen(port, '127.0.0.1', () => {
  console.log(issuer);
});
