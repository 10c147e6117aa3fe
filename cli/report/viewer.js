// morph's mesh viewer: a textured triangle mesh in a <canvas>, WebGL only, no library.
// Drag to turn, wheel to zoom, double-click to reset. The view can be set from the page's
// address (#yaw=45&pitch=10&zoom=1.2&mode=albedo) and from script: morphViewer.setView(...).
// The mesh arrives as base64 little-endian arrays in a JSON block (see cli/report/html.py).
"use strict";

(function () {
  function decode(b64, Type) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new Type(bytes.buffer);
  }

  // 4x4 matrices, column-major as WebGL wants them.
  function perspective(fovy, aspect, near, far) {
    const f = 1 / Math.tan(fovy / 2), nf = 1 / (near - far);
    return [f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) * nf, -1, 0, 0, 2 * far * near * nf, 0];
  }
  function multiply(a, b) {
    const out = new Array(16).fill(0);
    for (let c = 0; c < 4; c++) for (let r = 0; r < 4; r++) for (let k = 0; k < 4; k++) out[c * 4 + r] += a[k * 4 + r] * b[c * 4 + k];
    return out;
  }
  function rotation(yaw, pitch) {  // turn about y (yaw), then tilt about x (pitch)
    const cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
    const ry = [cy, 0, -sy, 0, 0, 1, 0, 0, sy, 0, cy, 0, 0, 0, 0, 1];
    const rx = [1, 0, 0, 0, 0, cp, sp, 0, 0, -sp, cp, 0, 0, 0, 0, 1];
    return multiply(rx, ry);
  }
  function translation(x, y, z) { return [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, x, y, z, 1]; }

  const VERTEX = `
    attribute vec3 position; attribute vec3 normal; attribute vec2 uv;
    uniform mat4 model; uniform mat4 viewProjection;
    varying vec3 vNormal; varying vec2 vUv;
    void main() {
      vNormal = (model * vec4(normal, 0.0)).xyz;
      vUv = uv;
      gl_Position = viewProjection * model * vec4(position, 1.0);
    }`;
  const FRAGMENT = `
    precision mediump float;
    uniform sampler2D image; uniform float useTexture; uniform float lighting;
    varying vec3 vNormal; varying vec2 vUv;
    void main() {
      vec3 base = mix(vec3(0.72), texture2D(image, vUv).rgb, useTexture);
      vec3 n = normalize(vNormal);
      if (!gl_FrontFacing) { base = vec3(0.3); n = -n; }  // the inside of the mask, seen from behind
      float lambert = max(dot(n, normalize(vec3(0.3, 0.4, 1.0))), 0.0);
      gl_FragColor = vec4(base * mix(1.0, 0.3 + 0.8 * lambert, lighting), 1.0);
    }`;

  function compile(gl, type, source) {
    const shader = gl.createShader(type);
    gl.shaderSource(shader, source);
    gl.compileShader(shader);
    if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
    return shader;
  }

  function start(canvas, data) {
    const options = { antialias: true, preserveDrawingBuffer: true };
    const gl = canvas.getContext("webgl2", options) || canvas.getContext("webgl", options);
    if (!gl) throw new Error("this browser has no WebGL");
    const program = gl.createProgram();
    gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT));
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
    gl.useProgram(program);

    const positions = decode(data.positions, Float32Array);
    for (const [name, array, size] of [["position", positions, 3], ["normal", decode(data.normals, Float32Array), 3],
                                       ["uv", decode(data.uvs, Float32Array), 2]]) {
      const buffer = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
      gl.bufferData(gl.ARRAY_BUFFER, array, gl.STATIC_DRAW);
      const location = gl.getAttribLocation(program, name);
      gl.enableVertexAttribArray(location);
      gl.vertexAttribPointer(location, size, gl.FLOAT, false, 0, 0);
    }
    const wide = data.index_type === "uint32";
    if (wide && !(gl instanceof WebGL2RenderingContext)) gl.getExtension("OES_element_index_uint");
    const indices = decode(data.indices, wide ? Uint32Array : Uint16Array);
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, gl.createBuffer());
    gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, indices, gl.STATIC_DRAW);

    // Centre and size of the mesh, for the camera.
    const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    for (let i = 0; i < positions.length; i++) { lo[i % 3] = Math.min(lo[i % 3], positions[i]); hi[i % 3] = Math.max(hi[i % 3], positions[i]); }
    const centre = lo.map((l, k) => (l + hi[k]) / 2);
    const radius = Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) / 2;

    const textures = {};
    const state = { yaw: 0, pitch: 0, zoom: 1, mode: "photo", ready: false, draws: 0 };
    const uniforms = {};
    for (const name of ["model", "viewProjection", "image", "useTexture", "lighting"]) uniforms[name] = gl.getUniformLocation(program, name);

    function draw() {
      const width = canvas.clientWidth * devicePixelRatio, height = canvas.clientHeight * devicePixelRatio;
      if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
      gl.viewport(0, 0, canvas.width, canvas.height);
      gl.clearColor(0.16, 0.17, 0.19, 1);
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      gl.enable(gl.DEPTH_TEST);
      const fov = 0.5, distance = radius / Math.sin(fov / 2) / state.zoom;
      const projection = perspective(fov, canvas.width / canvas.height, distance / 10, distance + 4 * radius);
      const view = translation(0, 0, -distance);
      const model = multiply(rotation(state.yaw * Math.PI / 180, state.pitch * Math.PI / 180),
                             translation(-centre[0], -centre[1], -centre[2]));
      gl.uniformMatrix4fv(uniforms.model, false, new Float32Array(model));
      gl.uniformMatrix4fv(uniforms.viewProjection, false, new Float32Array(multiply(projection, view)));
      const texture = textures[state.mode];
      gl.uniform1f(uniforms.useTexture, texture ? 1 : 0);
      gl.uniform1f(uniforms.lighting, state.mode === "photo" ? 0.35 : 1.0);  // the photo has its light already
      if (texture) { gl.activeTexture(gl.TEXTURE0); gl.bindTexture(gl.TEXTURE_2D, texture); gl.uniform1i(uniforms.image, 0); }
      gl.drawElements(gl.TRIANGLES, indices.length, wide ? gl.UNSIGNED_INT : gl.UNSIGNED_SHORT, 0);
      state.draws++;
    }
    let pending = false;
    function redraw() { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; draw(); }); } }

    function load(name, uri) {
      return new Promise((resolve, reject) => {
        const image = new Image();
        image.onload = () => {
          const texture = gl.createTexture();
          gl.bindTexture(gl.TEXTURE_2D, texture);
          gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, true);  // the file's top row is v = 1
          gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGB, gl.RGB, gl.UNSIGNED_BYTE, image);
          gl.generateMipmap(gl.TEXTURE_2D);
          gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR_MIPMAP_LINEAR);
          gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
          gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
          textures[name] = texture;
          resolve();
        };
        image.onerror = () => reject(new Error("cannot decode the " + name + " texture"));
        image.src = uri;
      });
    }

    function fromAddress() {
      const params = new URLSearchParams(location.hash.slice(1));
      for (const key of ["yaw", "pitch", "zoom"]) if (params.has(key)) state[key] = parseFloat(params.get(key)) || state[key];
      if (params.has("mode")) state.mode = params.get("mode");
    }

    // Controls: drag, wheel, double-click; buttons with data-view / data-mode inside the viewer's figure.
    let drag = null;
    canvas.addEventListener("pointerdown", (e) => { drag = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); });
    canvas.addEventListener("pointerup", () => { drag = null; });
    canvas.addEventListener("pointermove", (e) => {
      if (!drag) return;
      state.yaw += (e.clientX - drag[0]) * 0.5;
      state.pitch = Math.max(-89, Math.min(89, state.pitch + (e.clientY - drag[1]) * 0.5));
      drag = [e.clientX, e.clientY];
      redraw();
    });
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      state.zoom = Math.max(0.3, Math.min(8, state.zoom * Math.exp(-e.deltaY * 0.001)));
      redraw();
    }, { passive: false });
    canvas.addEventListener("dblclick", () => { Object.assign(state, { yaw: 0, pitch: 0, zoom: 1 }); redraw(); });
    canvas.addEventListener("webglcontextlost", () => {  // e.g. the browser's GPU process went away
      state.error = "the WebGL context was lost; reload the page";
      canvas.insertAdjacentHTML("afterend", `<p class="error">3D view: ${state.error}</p>`);
    });
    window.addEventListener("hashchange", () => { fromAddress(); redraw(); });
    window.addEventListener("resize", redraw);

    const api = {
      state,
      setView(yaw, pitch = 0, zoom = 1) { Object.assign(state, { yaw, pitch, zoom }); draw(); },
      setMode(mode) { state.mode = mode; draw(); },
      draw,
    };
    fromAddress();
    Promise.all(Object.entries(data.textures).map(([name, uri]) => load(name, uri))).then(() => {
      draw();
      state.ready = true;
      document.dispatchEvent(new CustomEvent("morph-viewer-ready"));
    }, (error) => { state.error = String(error); draw(); state.ready = true; });
    return api;
  }

  window.addEventListener("DOMContentLoaded", () => {
    const canvas = document.getElementById("viewer");
    const block = document.getElementById("mesh-data");
    if (!canvas || !block) return;
    try {
      window.morphViewer = start(canvas, JSON.parse(block.textContent));
    } catch (error) {
      window.morphViewer = { state: { ready: true, error: String(error) } };
      canvas.insertAdjacentHTML("afterend", `<p class="error">3D view unavailable: ${error}</p>`);
    }
    for (const button of document.querySelectorAll("[data-view]")) {
      button.addEventListener("click", () => window.morphViewer.setView(...button.dataset.view.split(",").map(Number)));
    }
    for (const button of document.querySelectorAll("[data-mode]")) {
      button.addEventListener("click", () => window.morphViewer.setMode(button.dataset.mode));
    }
  });
})();
