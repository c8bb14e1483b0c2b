// Swagger UI on this daemon's own OpenAPI document (this file shadows the
// package's, which points at a public demo). No inline script: the page's
// Content-Security-Policy allows scripts of this origin only.
"use strict";
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/api/v1/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // Requests tried from the page go to this origin with the token typed into "Authorize".
    persistAuthorization: false
  });
});
