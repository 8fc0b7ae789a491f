"""Console jobs (large CSV imports and completions, run by a task), each with a progress page."""
from __future__ import annotations

from django.contrib import admin, messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from drip.admin.base import NoDelete, require
from drip.doors.console import jobs
from drip.doors.console.audit import record
from drip.models import ConsoleJob

# Publishing a job again does what starting it did: it needs the permissions that start one.
START_PERMISSIONS: dict[str, list[str]] = {
    ConsoleJob.Kind.IMPORT: ["drip.add_contact", "drip.change_contact"],
    ConsoleJob.Kind.COMPLETE: ["drip.change_event"],
}


class ConsoleJobAdmin(NoDelete, admin.ModelAdmin):
    """Large CSV imports and completions, run by a task; each has a progress page."""

    list_display = ("id", "kind", "event", "status", "progress_shown", "created_by", "created_at", "finished_at")
    list_filter = ("kind", "status")
    list_select_related = ("event", "created_by")
    readonly_fields = ("kind", "event", "created_by", "status", "total", "done", "result", "error", "attempts",
                       "created_at", "started_at", "finished_at")
    exclude = ("payload", "claim_token")

    @admin.display(description="progress")
    def progress_shown(self, job: ConsoleJob) -> SafeString:
        url = reverse("admin:drip_consolejob_progress", args=[job.pk])
        return format_html('<a href="{}">{} / {}</a>', url, jobs.progress(job), job.total)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def may_retry(self, request: HttpRequest, job: ConsoleJob) -> bool:
        return bool(request.user.is_active and request.user.has_perms(START_PERMISSIONS[job.kind]))

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.progress_view)
        return [path("<int:pk>/progress/", view, name="drip_consolejob_progress"), *super().get_urls()]

    def progress_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Server-rendered; reloads itself (a meta refresh) until the job has finished."""
        require(self.has_view_permission(request))
        job = ConsoleJob.objects.select_related("event", "created_by").filter(pk=pk).first()
        if job is None:
            raise Http404(f"no console job {pk}")
        if request.method == "POST" and "retry" in request.POST:
            require(self.may_retry(request, job))
            if jobs.stalled(job):
                jobs.retry(job)
                record(request, [job], "Published the stalled job again (run it again)")
                self.message_user(request, "Published the job again; it runs if no worker holds it.", messages.INFO)
            return HttpResponseRedirect(request.path)
        done = jobs.progress(job)
        return TemplateResponse(request, "admin/drip/job_progress.html", {
            **self.admin_site.each_context(request), "job": job, "done": done,
            "percent": 100 * done // job.total if job.total else (100 if job.finished else 0),
            "stalled": jobs.stalled(job), "may_retry": self.may_retry(request, job), "next_url": self._next_url(job),
            "title": f"{job.get_kind_display()}: {job.event.title}", "opts": self.model._meta,
        })

    @staticmethod
    def _next_url(job: ConsoleJob) -> str:
        if job.kind == ConsoleJob.Kind.IMPORT:
            return reverse("admin:drip_registration_changelist") + f"?event__id__exact={job.event_id}"
        return reverse("admin:drip_event_change", args=[job.event_id])
